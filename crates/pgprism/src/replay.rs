//! `pgprism replay`: re-apply changes from a saved LSN. Checks the slot can still deliver
//! it, takes a new epoch (the running leader steps down at its next heartbeat), and
//! rewinds the chosen targets; the next leader re-applies from there.

use std::path::PathBuf;

use clap::Args;
use pgprism_decoder::Lsn;
use pgprism_leader::Epoch;

use crate::config::Config;

/// `pgprism replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config", env = "PGPRISM_CONFIG")]
    pub config: PathBuf,
    /// Re-apply every transaction that committed at or after this LSN (like 0/16B3748).
    #[arg(long = "from-lsn")]
    pub from_lsn: Lsn,
    /// Only these sinks or targets (repeatable; default: all).
    #[arg(long = "sink")]
    pub sinks: Vec<String>,
}

/// Run `pgprism replay`.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config, std::env::vars())?;
    let rewound = pgprism_sink::replay::rewind(
        &cfg.projector(Epoch(0)),
        &cfg.source.slot,
        args.from_lsn,
        &args.sinks,
    )
    .await?;
    for (name, before, after) in &rewound.targets {
        if after < before {
            println!(
                "{name}: rewound from {} to {}",
                before.resume_lsn, after.resume_lsn
            );
        } else {
            println!("{name}: already at {}, unchanged", before.resume_lsn);
        }
    }
    println!(
        "took epoch {}: the running leader steps down at its next heartbeat; the next leader re-applies from {}",
        rewound.epoch, args.from_lsn
    );
    Ok(())
}
