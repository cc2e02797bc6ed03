//! `pgprism run`: the sidecar. Every replica campaigns; the leader streams the slot into
//! the projections; standbys wait. Metrics and health over HTTP.
//!
//! Leading: take the slot over from a dead leader's walsender and, at the same time, start
//! the projector (which connects every target at once and stamps our epoch on each), open
//! the stream at the smallest target offset, and drive until told to stop. The `streaming`
//! line says how long each step took. Leadership lost (lock session gone, epoch
//! superseded): stop writing at once — the in-flight batch is abandoned, its transactions roll back, and
//! the fence would refuse it anyway. SIGTERM/SIGINT: stop reading, flush the open batch,
//! commit the offsets, send the final standby status update, release the lock, exit 0,
//! all within `shutdown.deadline`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pgprism_decoder::stream::{Backoff, ErrorClass, ReplicationStream, SlotCreation, StreamConfig};
use pgprism_leader::{Election, LeaderConfig, Leadership, slot};
use pgprism_pg::{Dsn, error_text};
use pgprism_sink::drive::{DriveError, DriveOptions, drive};
use pgprism_sink::{Class, LagClock, Projector};
use tokio::sync::watch;

use crate::config::Config;
use crate::http;

/// `pgprism run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (see pgprism.example.toml).
    #[arg(short = 'c', long = "config", env = "PGPRISM_CONFIG")]
    pub config: PathBuf,
}

/// Why leading ended.
enum Outcome {
    /// Shut down as asked.
    Stopped,
    /// The election says another replica leads now.
    Lost,
    /// A sink refused our epoch.
    Fenced,
    /// Something failed; `retry` if it may clear up.
    Failed { error: anyhow::Error, retry: bool },
}

/// `pgprism run`: the configuration file with its `PGPRISM_…` overrides, until
/// SIGTERM/SIGINT.
pub async fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config, std::env::vars())?;
    let stop = stop_on_signals()?;
    run(cfg, stop).await
}

/// The run loop: serve `/metrics` and the health checks (`http.bind`), campaign, and
/// while leading stream the slot into every target; step down, back off and campaign
/// again on what may clear up. Returns `Ok` once `stop` turns `true` (after the final
/// flush, acknowledgement and the lock's release), an error for what retrying cannot
/// fix (configuration, TLS, credentials).
pub async fn run(cfg: Config, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let health = Arc::new(http::Health::default());
    let recorder = http::install_metrics()?;
    if let Some(bind) = cfg.http.bind {
        http::serve(bind, recorder, health.clone()).await?;
    }
    let dsn = cfg.source.dsn.clone();
    let replica = cfg
        .leader
        .replica_id
        .clone()
        .unwrap_or_else(default_replica_id);
    let mut leader_cfg = LeaderConfig::new(cfg.pipeline.clone(), replica.clone());
    leader_cfg.retry_interval = cfg.leader.retry_interval;
    leader_cfg.heartbeat_interval = cfg.leader.heartbeat_interval;
    leader_cfg.takeover_after = cfg.leader.takeover_after;
    leader_cfg.lock_key = cfg.leader.lock_key;
    let election = Election::new(leader_cfg, dsn.clone());
    let backoff = Backoff::default();
    let mut failures = 0u32;
    metrics::gauge!("pgprism_is_leader").set(0.0);
    tracing::info!(pipeline = %cfg.pipeline, replica = %replica, "started; campaigning");
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        health.ready.store(true, Ordering::Relaxed);
        let mut leadership = match election.campaign(stop.clone()).await {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            // Wrong TLS settings, credentials or database name: say so and stop, rather
            // than retry forever behind a log line.
            Err(e) if e.is_misconfiguration() => {
                anyhow::bail!("cannot connect to Postgres at {}: {e}", dsn.target());
            }
            Err(e) => {
                health.ready.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "campaign failed; retrying");
                if wait_or_stop(&stop, cfg.leader.retry_interval).await {
                    return Ok(());
                }
                continue;
            }
        };
        health.ready.store(false, Ordering::Relaxed);
        let epoch = leadership.epoch();
        metrics::gauge!("pgprism_is_leader").set(1.0);
        metrics::gauge!("pgprism_epoch").set(epoch.0 as f64);
        let outcome = lead(&cfg, &dsn, &mut leadership, stop.clone(), &health).await;
        metrics::gauge!("pgprism_is_leader").set(0.0);
        // A standby reports no lag or slot of its own: the leader's numbers are the truth.
        for p in &cfg.projections {
            for t in &p.targets {
                metrics::gauge!("pgprism_projection_lag_seconds", "projection" => p.name.clone(), "sink" => t.sink.clone()).set(0.0);
            }
        }
        metrics::gauge!("pgprism_replication_lag_bytes").set(0.0);
        metrics::gauge!("pgprism_slot_retained_wal_bytes").set(0.0);
        health.leading.store(false, Ordering::Relaxed);
        match outcome {
            Outcome::Stopped => {
                leadership.release().await;
                tracing::info!(epoch = epoch.0, "stopped; lock released");
                return Ok(());
            }
            Outcome::Lost => {
                tracing::warn!(
                    epoch = epoch.0,
                    "leadership lost; stopped writing, campaigning again"
                );
                failures = 0;
            }
            Outcome::Fenced => {
                tracing::warn!(
                    epoch = epoch.0,
                    "a newer leader owns the sinks; stepping down"
                );
                leadership.release().await;
                failures = 0;
            }
            Outcome::Failed { error, retry } => {
                leadership.release().await;
                if !retry {
                    return Err(error);
                }
                let delay = backoff.delay(failures);
                failures += 1;
                tracing::warn!(error = %format!("{error:#}"), retry_in = ?delay, "leading failed; stepped down, retrying");
                if wait_or_stop(&stop, delay).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Lead until stopped, lost, fenced or failed.
async fn lead(
    cfg: &Config,
    dsn: &Dsn,
    leadership: &mut Leadership,
    mut stop: watch::Receiver<bool>,
    health: &http::Health,
) -> Outcome {
    let epoch = leadership.epoch();
    let pcfg = cfg.projector(epoch);
    // Each step of taking over, timed: what a new leader waits on before it streams.
    let mut took = Steps::default();
    let setup = async {
        let client = crate::session::connect(&dsn.named("pgprism slot")).await?;
        crate::partitions::refuse_hidden(&client, cfg).await?;
        // A replay or rebuild writing the offsets under its epoch: our stamps would fence it.
        pgprism_leader::wait_for_offsets(&client, cfg.lock_key()).await?;
        // The dead leader's walsender letting go of the slot, and connecting and stamping
        // every target, wait on different things: both at once.
        let slot = timed(async {
            slot::take_over(
                &client,
                &cfg.source.slot,
                cfg.leader.slot_takeover_after,
                // The dead leader's walsender lets go within moments of its client's death: look often.
                Duration::from_millis(20),
            )
            .await
            .context("taking the slot over")
        });
        let targets = timed(async { anyhow::Ok(Projector::start(&pcfg).await?) });
        let ((_, slot_took), (projector, targets_took)) = tokio::try_join!(slot, targets)?;
        took.add("slot_ms", slot_took);
        took.add("targets_ms", targets_took);
        let opened = std::time::Instant::now();
        let mut scfg = StreamConfig::new(dsn.clone(), &cfg.source.slot, &cfg.source.publication);
        scfg.start_lsn = projector.resume_lsn();
        scfg.application_name = format!("pgprism {}", cfg.pipeline);
        scfg.chunk_changes = cfg.source.chunk_changes;
        if cfg.source.create {
            scfg.create_slot = Some(SlotCreation { temporary: false });
            scfg.create_publication_for = Some(cfg.source.tables.clone());
        }
        let stream = ReplicationStream::open(scfg).await?;
        took.add("stream_ms", opened.elapsed());
        anyhow::Ok((projector, stream))
    };
    let (mut projector, mut stream) = tokio::select! {
        biased;
        () = leadership.lost() => return Outcome::Lost,
        _ = stop.wait_for(|s| *s) => return Outcome::Stopped,
        r = setup => match r {
            Ok(ps) => ps,
            Err(error) => {
                let retry = retryable(&error);
                return Outcome::Failed { error, retry };
            }
        },
    };
    tracing::info!(epoch = epoch.0, start = %stream.info().start_lsn, took = %took, "streaming");
    health.leading.store(true, Ordering::Relaxed);
    health.ready.store(true, Ordering::Relaxed);
    let reporter = tokio::spawn(report(
        cfg.clone(),
        dsn.named("pgprism monitor"),
        projector.lag_clock(),
    ));
    let heartbeat = cfg
        .heartbeat
        .interval
        .filter(|d| !d.is_zero())
        .map(|every| tokio::spawn(emit_heartbeats(dsn.named("pgprism heartbeat"), every)));
    let replay_window = cfg.leader.replay_window;
    let (drive_stop_tx, mut drive_stop) = watch::channel(false);
    let opts = DriveOptions {
        replay_window,
        until: None,
    };
    let outcome = {
        let driving = drive(
            &mut projector,
            &mut stream,
            &mut drive_stop,
            &opts,
            |report| {
                if report.changes > 0 {
                    tracing::debug!(changes = report.changes, written = report.written, took_us = report.took.as_micros() as u64, offset = %report.offset.resume_lsn, "flushed");
                    // Durable in every target, the slot not yet acknowledged.
                    #[cfg(feature = "failpoints")]
                    fail::fail_point!("after-sink-commit", |_| pgprism_pg::crash_at(
                        "after-sink-commit"
                    ));
                }
            },
        );
        tokio::pin!(driving);
        let mut stopping = false;
        let give_up = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(give_up);
        loop {
            tokio::select! {
                // Lost leadership wins: stop writing at once, abandoning the batch in flight.
                biased;
                () = leadership.lost() => break Outcome::Lost,
                r = stop.wait_for(|s| *s), if !stopping => {
                    let _ = r;
                    stopping = true;
                    give_up.as_mut().reset(tokio::time::Instant::now() + cfg.shutdown.deadline);
                    drive_stop_tx.send_replace(true);
                    tracing::info!("stopping: flushing the open batch");
                }
                () = &mut give_up, if stopping => {
                    tracing::error!(deadline = ?cfg.shutdown.deadline,
                        "shutdown deadline passed before the open batch was durable; exiting without it (the next leader re-applies it)");
                    break Outcome::Stopped;
                }
                r = &mut driving => break match r {
                    Ok(()) => Outcome::Stopped,
                    Err(DriveError::Sink(e)) if e.is_fenced() => Outcome::Fenced,
                    Err(DriveError::Sink(e)) => Outcome::Failed { retry: e.class() == Class::Transient, error: e.into() },
                    Err(DriveError::Stream(e)) => Outcome::Failed { retry: e.class() == ErrorClass::Transient, error: e.into() },
                },
            }
        }
    };
    reporter.abort();
    if let Some(h) = heartbeat {
        h.abort();
    }
    if matches!(outcome, Outcome::Stopped) {
        // The final standby status update, within what is left of the deadline.
        let left = cfg.shutdown.deadline / 2;
        match stream.shutdown(left).await {
            Ok(lsn) => tracing::info!(durable = %projector.ack_lsn(), acknowledged = %lsn,
                replay_window_bytes = replay_window, "final standby status sent (the replay window holds the acknowledgement back)"),
            Err(e) => tracing::warn!(error = %e, "final acknowledgement not confirmed"),
        }
    }
    outcome
}

/// Durations of the steps of a start.
#[derive(Default)]
struct Steps(Vec<(&'static str, Duration)>);

impl Steps {
    fn add(&mut self, name: &'static str, took: Duration) {
        self.0.push((name, took));
    }
}

/// `f`'s output and how long it took.
async fn timed<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, Duration)> {
    let started = std::time::Instant::now();
    Ok((f.await?, started.elapsed()))
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, d)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{name}={}", d.as_millis())?;
        }
        Ok(())
    }
}

/// Whether leading may succeed if tried again.
fn retryable(e: &anyhow::Error) -> bool {
    if let Some(e) = e.downcast_ref::<pgprism_sink::SinkError>() {
        return e.class() == Class::Transient;
    }
    if let Some(e) = e.downcast_ref::<pgprism_decoder::stream::StreamError>() {
        return e.class() == ErrorClass::Transient;
    }
    if let Some(e) = e.downcast_ref::<pgprism_leader::LeaderError>() {
        return matches!(
            e,
            pgprism_leader::LeaderError::Db { .. } | pgprism_leader::LeaderError::Redis { .. }
        );
    }
    true
}

/// Update the lag and slot metrics every second, also while a flush is stuck.
async fn report(cfg: Config, dsn: Dsn, clock: Arc<LagClock>) {
    let labels: Vec<(String, String)> = cfg
        .projections
        .iter()
        .flat_map(|p| p.targets.iter().map(|t| (p.name.clone(), t.sink.clone())))
        .collect();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let lag = clock.lag().as_secs_f64();
        for (projection, sink) in &labels {
            metrics::gauge!("pgprism_projection_lag_seconds", "projection" => projection.clone(), "sink" => sink.clone()).set(lag);
        }
        let Some(c) = crate::session::keep(&mut client, &dsn).await else {
            continue;
        };
        let row = c
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::float8,
                        (pg_current_wal_lsn() - restart_lsn)::float8,
                        safe_wal_size::float8,
                        (SELECT setting::float8 * 1024 * 1024 FROM pg_settings
                          WHERE name = 'max_slot_wal_keep_size' AND setting <> '-1')
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[&cfg.source.slot],
            )
            .await;
        if let Ok(Some(row)) = row {
            let lag_bytes: Option<f64> = row.get(0);
            let retained: Option<f64> = row.get(1);
            let safe: Option<f64> = row.get(2);
            let keep: Option<f64> = row.get(3);
            metrics::gauge!("pgprism_replication_lag_bytes").set(lag_bytes.unwrap_or(0.0));
            metrics::gauge!("pgprism_slot_retained_wal_bytes").set(retained.unwrap_or(0.0));
            // Warn while a fifth of max_slot_wal_keep_size is left before Postgres
            // invalidates the slot.
            if let (Some(safe), Some(keep)) = (safe, keep)
                && safe < keep / 5.0
            {
                if !warned {
                    tracing::warn!(slot = %cfg.source.slot, safe_wal_bytes = safe, max_slot_wal_keep_bytes = keep,
                        "the slot is close to max_slot_wal_keep_size; Postgres will invalidate it if the sinks do not catch up");
                }
                warned = true;
            } else {
                warned = false;
            }
        }
    }
}

/// Emit a non-transactional logical message every `every`, so that an idle database
/// produces something to acknowledge and the slot keeps moving.
async fn emit_heartbeats(dsn: Dsn, every: Duration) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(c) = crate::session::keep(&mut client, &dsn).await
            && let Err(e) = c
                .execute(
                    "SELECT pg_logical_emit_message(false, 'pgprism.heartbeat', '')",
                    &[],
                )
                .await
        {
            tracing::debug!(error = %error_text(&e), "heartbeat message failed");
        }
    }
}

/// A watch that turns true on SIGTERM or SIGINT; a second signal exits at once.
fn stop_on_signals() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n == 0 {
                tracing::info!("signal received: shutting down (again to exit at once)");
                tx.send_replace(true);
            } else {
                std::process::exit(130);
            }
        }
    });
    Ok(rx)
}

/// Sleep `d`; `true` if stop was asked meanwhile.
async fn wait_or_stop(stop: &watch::Receiver<bool>, d: Duration) -> bool {
    let mut waiting = stop.clone();
    tokio::select! {
        _ = waiting.wait_for(|s| *s) => true,
        () = tokio::time::sleep(d) => *stop.borrow(),
    }
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgprism".to_owned());
    format!("{host}:{}", std::process::id())
}
