//! `pgprism rebuild`: build a projection's read model again beside the live one and swap
//! it in (see `pgprism_sink::rebuild`), following the progress on the terminal.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use pgprism_leader::Epoch;

use crate::config::Config;

/// `pgprism rebuild`
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config", env = "PGPRISM_CONFIG")]
    pub config: PathBuf,
    /// The projection to rebuild (every target of it).
    #[arg(long)]
    pub projection: String,
    /// Return once the rebuild is requested instead of following it to the swap.
    #[arg(long)]
    pub no_wait: bool,
}

/// How often progress is read.
const POLL: Duration = Duration::from_secs(2);

/// Run `pgprism rebuild`.
pub async fn run(args: RebuildArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config, std::env::vars())?;
    let pcfg = cfg.projector(Epoch(0));
    let requested = pgprism_sink::rebuild::request(&pcfg, &args.projection).await?;
    for (target, shadow) in &requested.targets {
        match shadow {
            Some(table) => println!("{target}: building {table} beside the live table"),
            None => println!("{target}: writing every key again under its guard"),
        }
    }
    println!(
        "took epoch {}: the running leader steps down at its next heartbeat; the next leader rebuilds",
        requested.epoch
    );
    if args.no_wait {
        println!("follow it with `pgprism status`");
        return Ok(());
    }
    let names: Vec<&str> = requested.targets.iter().map(|(t, _)| t.as_str()).collect();
    let started = Instant::now();
    // Per target: (when, rows) at the first sighting, for the rate.
    let mut first: std::collections::HashMap<String, (Instant, u64)> = Default::default();
    loop {
        tokio::time::sleep(POLL).await;
        let status = match pgprism_sink::status::read(&pcfg, &cfg.source.slot).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("reading progress: {e}");
                continue;
            }
        };
        let mut left = 0;
        for t in status
            .targets
            .iter()
            .filter(|t| names.contains(&t.name.as_str()))
        {
            // A Postgres target: the shadow's state until the swap; Redis: its own.
            let (state, shadow) = match (&t.rebuild, &t.backfill) {
                (Some(r), _) => (r, true),
                (None, Some(b)) => (b, false),
                (None, None) => continue,
            };
            let rebuilding_pg = requested
                .targets
                .iter()
                .any(|(n, s)| n == &t.name && s.is_some());
            if rebuilding_pg && !shadow {
                if state.running() {
                    left += 1;
                } else {
                    println!("{}: swapped in ({} rows)", t.name, state.rows);
                }
                continue;
            }
            if !state.running() && !shadow {
                println!("{}: done ({} rows)", t.name, state.rows);
                continue;
            }
            left += 1;
            let (t0, r0) = *first
                .entry(t.name.clone())
                .or_insert((Instant::now(), state.rows));
            let rate =
                (state.rows.saturating_sub(r0)) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
            let eta = match state.estimate {
                Some(e) if rate > 0.0 && e > state.rows => {
                    format!("{} s", ((e - state.rows) as f64 / rate).ceil() as u64)
                }
                _ => "-".into(),
            };
            println!(
                "{}: chunk {}, {} rows of ~{}, {:.0} rows/s, ETA {eta}",
                t.name,
                state.chunks,
                state.rows,
                state.estimate.unwrap_or(0),
                rate
            );
        }
        if left == 0 {
            println!(
                "rebuild of {} done in {:.0?}",
                args.projection,
                started.elapsed()
            );
            return Ok(());
        }
    }
}
