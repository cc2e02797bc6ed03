//! `pgprism-candidate`: one replica of a pipeline as a process of its own, so that the
//! chaos tests (`tests/chaos.rs`) can kill -9 it, freeze it with SIGSTOP and restart it.
//! It exists for those tests until `pgprism run` wires the leader into the real pipeline.
//!
//! It is a real replica loop over this crate's API, not a mock: campaign with
//! [`Election`]; when leading, [stamp](PgFence::stamp) the sink and write a batch every
//! ~20 ms, each one row plus [`PgFence::commit_offset`] in one transaction; on
//! [`LeaderError::Fenced`], or once [`Leadership::lost`] resolves, stop writing and
//! campaign again. SIGTERM finishes the batch in flight, releases the lock and exits 0.
//!
//! The only thing it checks before a batch is whether it was told it lost. It adds no
//! other guard of its own: keeping a deposed leader's writes out is the fence's job, and
//! the tests are there to catch the fence failing at it.
//!
//! Stdout has one line per change of role, which the tests parse: `leading epoch=N`,
//! `lost epoch=N`, `fenced epoch=N`. Errors go to stderr as `error …`.
//!
//! The offset is a stand-in LSN that grows by `--lsn-step` per batch (default 1, so the
//! offset counts the batches committed and equals the number of rows in the sink table).
//! A large step stands for a replica that had streamed far ahead of the durable offset
//! when it was frozen, so that its stale commits are ahead of the new leader's offset and
//! only the epoch, not the offset's monotonicity, can refuse them.
//!
//! ```text
//! pgprism-candidate --dsn DSN --pipeline NAME --replica ID [--sink-table TABLE]
//!                   [--retry-ms N] [--heartbeat-ms N] [--takeover-ms N] [--lsn-step N]
//! ```

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use pgprism_decoder::Lsn;
use pgprism_leader::{Election, LeaderConfig, LeaderError, Leadership, Offset, PgFence};
use pgprism_pg::{Dsn, quote_ident};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;

const USAGE: &str = "usage: pgprism-candidate --dsn DSN --pipeline NAME --replica ID \
    [--sink-table TABLE] [--retry-ms N] [--heartbeat-ms N] [--takeover-ms N] [--lsn-step N]";

/// The sink table when `--sink-table` is not given.
const DEFAULT_SINK_TABLE: &str = "chaos_writes";

/// Interval between a leader's batches.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

type BoxError = Box<dyn Error + Send + Sync>;

/// The command line.
struct Args {
    dsn: Dsn,
    cfg: LeaderConfig,
    sink_table: String,
    lsn_step: u64,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut dsn, mut pipeline, mut replica) = (None, None, None);
    let mut sink_table = DEFAULT_SINK_TABLE.to_owned();
    let (mut retry, mut heartbeat, mut takeover) = (None, None, None);
    let mut lsn_step = 1;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| -> Result<u64, String> {
            v.parse()
                .map_err(|e| format!("{flag}: {v:?} is not a number: {e}"))
        };
        match flag.as_str() {
            "--dsn" => dsn = Some(Dsn::parse(&value).map_err(|e| e.to_string())?),
            "--pipeline" => pipeline = Some(value),
            "--replica" => replica = Some(value),
            "--sink-table" => sink_table = value,
            "--retry-ms" => retry = Some(Duration::from_millis(number(&value)?)),
            "--heartbeat-ms" => heartbeat = Some(Duration::from_millis(number(&value)?)),
            "--takeover-ms" => takeover = Some(Duration::from_millis(number(&value)?)),
            "--lsn-step" => lsn_step = number(&value)?.max(1),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let missing = |name: &str| format!("{name} is required");
    let mut cfg = LeaderConfig::new(
        pipeline.ok_or_else(|| missing("--pipeline"))?,
        replica.ok_or_else(|| missing("--replica"))?,
    );
    cfg.retry_interval = retry.unwrap_or(cfg.retry_interval);
    cfg.heartbeat_interval = heartbeat.unwrap_or(cfg.heartbeat_interval);
    cfg.takeover_after = takeover.unwrap_or(cfg.takeover_after);
    Ok(Args {
        dsn: dsn.ok_or_else(|| missing("--dsn"))?,
        cfg,
        sink_table,
        lsn_step,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Installed before anything else, so that an early SIGTERM is a clean exit too.
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("error installing the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        term.recv().await;
        stop_tx.send_replace(true);
    });
    run(args, stop).await;
    ExitCode::SUCCESS
}

/// Why a replica stopped writing as leader.
enum Stop {
    /// The election said so (lock session gone, epoch superseded).
    Lost,
    /// The sink refused a commit: a newer epoch owns it.
    Fenced,
    /// SIGTERM.
    Shutdown,
}

/// Campaign, lead until told otherwise, campaign again; until SIGTERM.
async fn run(args: Args, mut stop: watch::Receiver<bool>) {
    let election = Election::new(args.cfg.clone(), args.dsn.clone());
    loop {
        let mut leadership = match election.campaign(stop.clone()).await {
            Ok(Some(leadership)) => leadership,
            Ok(None) => return,
            Err(e) => {
                eprintln!("error {e}");
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(args.cfg.retry_interval) => continue,
                }
            }
        };
        let epoch = leadership.epoch();
        say(&format!("leading epoch={epoch}"));
        match lead(&args, &mut leadership, &mut stop).await {
            Stop::Lost => say(&format!("lost epoch={epoch}")),
            Stop::Fenced => say(&format!("fenced epoch={epoch}")),
            Stop::Shutdown => {
                leadership.release().await;
                return;
            }
        }
        // Dropping `leadership` ends the lock session if it still exists.
    }
}

/// Write as leader until lost, fenced or shut down; on other errors (the sink went away)
/// reconnect and stamp again, still as this epoch.
async fn lead(args: &Args, leadership: &mut Leadership, stop: &mut watch::Receiver<bool>) -> Stop {
    loop {
        let e = match write_batches(args, leadership, stop).await {
            Ok(why) => return why,
            Err(e) => e,
        };
        if e.downcast_ref::<LeaderError>()
            .is_some_and(|e| matches!(e, LeaderError::Fenced { .. }))
        {
            return Stop::Fenced;
        }
        eprintln!("error {e}");
        tokio::select! {
            biased;
            () = leadership.lost() => return Stop::Lost,
            () = stopped(stop) => return Stop::Shutdown,
            () = tokio::time::sleep(args.cfg.retry_interval) => {}
        }
    }
}

/// Connect to the sink, stamp our epoch, and write a batch per tick from the durable offset.
async fn write_batches(
    args: &Args,
    leadership: &mut Leadership,
    stop: &mut watch::Receiver<bool>,
) -> Result<Stop, BoxError> {
    let epoch = leadership.epoch();
    let (mut sink, _connection) = pgprism_pg::connect(&args.dsn).await?;
    let table = quote_ident(&args.sink_table);
    sink.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
             seq        bigserial PRIMARY KEY,
             epoch      bigint NOT NULL,
             replica    text NOT NULL,
             lsn        bigint NOT NULL,
             written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ))
    .await?;
    let (fence, from) = PgFence::stamp(
        &sink,
        &args.cfg.pipeline,
        &args.sink_table,
        epoch,
        args.cfg.takeover_after,
    )
    .await?;
    let insert = format!("INSERT INTO {table} (epoch, replica, lsn) VALUES ($1, $2, $3)");
    let mut at = from.resume_lsn;
    let mut tick = tokio::time::interval(BATCH_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Lost first: a leader that has been told it lost starts no further batch. A
            // batch already under way is not cut short: whether it lands is the fence's
            // decision, which is what the chaos tests check.
            biased;
            () = leadership.lost() => return Ok(Stop::Lost),
            () = stopped(stop) => return Ok(Stop::Shutdown),
            _ = tick.tick() => {}
        }
        let to = Lsn(at
            .0
            .checked_add(args.lsn_step)
            .ok_or("the offset overflowed")?);
        write_batch(&mut sink, &fence, &insert, &args.cfg.replica_id, to).await?;
        at = to;
    }
}

/// One batch: a row carrying our epoch and the offset moved to `to`, in one transaction.
async fn write_batch(
    sink: &mut Client,
    fence: &PgFence,
    insert: &str,
    replica: &str,
    to: Lsn,
) -> Result<(), BoxError> {
    let lsn = i64::try_from(to.0)?;
    let tx = sink.transaction().await?;
    tx.execute(insert, &[&fence.epoch().0, &replica, &lsn])
        .await?;
    if let Err(e) = fence
        .commit_offset(&tx, Offset::after_transaction(to))
        .await
    {
        // Report the fence's error, not the rollback's: if the rollback fails the session
        // is gone, and the server has rolled the batch back with it.
        let _ = tx.rollback().await;
        return Err(e.into());
    }
    tx.commit().await?;
    Ok(())
}

/// Resolves once SIGTERM has been received.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The sender lives as long as the process; should it go, stopping is the safe reading.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Print a role line and flush it at once: the tests time takeovers by these lines.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // Nobody left to read it (the test is gone) is no reason to stop replicating.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
