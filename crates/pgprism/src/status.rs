//! `pgprism status`: the leader and its epoch, the slot, and every target's offset, lag
//! and dead letters — read from the databases, so it works from any machine.

use std::path::PathBuf;

use clap::Args;
use pgprism_leader::Epoch;

use crate::config::Config;

/// `pgprism status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config", env = "PGPRISM_CONFIG")]
    pub config: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run `pgprism status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config, std::env::vars())?;
    let status = pgprism_sink::status::read(&cfg.projector(Epoch(0)), &cfg.source.slot).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    match (&status.leader, status.epoch, status.heartbeat_age_s) {
        (Some(leader), Some(epoch), Some(age)) => println!(
            "pipeline {:?}: leader {leader} (epoch {epoch}), heartbeat {age:.1} s ago{}",
            status.pipeline,
            if age > cfg.leader.takeover_after.as_secs_f64() {
                " — stale: a standby should take over"
            } else {
                ""
            }
        ),
        (_, Some(epoch), _) => println!(
            "pipeline {:?}: no leader now (last epoch {epoch})",
            status.pipeline
        ),
        _ => println!("pipeline {:?}: no leader has run yet", status.pipeline),
    }
    println!("source WAL at {}", status.wal_lsn);
    match &status.slot {
        Some(s) => println!(
            "slot {:?}: {}, confirmed {}, retains {}{}",
            s.name,
            if s.active { "streaming" } else { "inactive" },
            s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            s.retained_wal_bytes
                .map(bytes)
                .unwrap_or_else(|| "-".into()),
            s.wal_status
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ),
        None => println!("slot {:?}: does not exist", cfg.source.slot),
    }
    println!();
    println!(
        "{:<32} {:<8} {:<14} {:>10} {:>6} {:>6}  backfill",
        "target", "sink", "offset", "behind", "epoch", "dead"
    );
    for t in &status.targets {
        if let Some(e) = &t.error {
            println!("{:<32} {:<8} unreadable: {e}", t.name, t.sink);
            continue;
        }
        let offset = match (&t.resume_lsn, t.changes_done) {
            (Some(l), Some(n)) if n > 0 => format!("{l}+{n}"),
            (Some(l), _) => l.clone(),
            _ => "never".to_owned(),
        };
        let mut backfill = t
            .backfill
            .as_ref()
            .map(|b| b.summary())
            .unwrap_or_else(|| "-".into());
        if let Some(r) = &t.rebuild {
            backfill = format!("{backfill}; rebuild {}", r.summary());
        }
        println!(
            "{:<32} {:<8} {:<14} {:>10} {:>6} {:>6}  {backfill}",
            t.name,
            t.sink,
            offset,
            t.lag_bytes
                .map(|b| bytes(b as i64))
                .unwrap_or_else(|| "-".into()),
            t.epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            t.dead_letters
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

fn bytes(b: i64) -> String {
    let b = b as f64;
    if b < 1024.0 {
        format!("{b} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} kB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} GB", b / 1024.0 / 1024.0 / 1024.0)
    }
}
