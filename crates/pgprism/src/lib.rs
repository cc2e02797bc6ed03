//! `pgprism`: change-data-capture sidecar for Postgres. This crate wires the others
//! together: the command line ([`cli_main`], the binary's whole `main`), the commands in
//! their own modules, and the run loop as a library function, [`run`], for embedding and
//! for tests that run the real product in-process.

mod check;
mod config;
mod dlq;
mod http;
mod jsonl;
mod partitions;
mod rebuild;
mod replay;
mod run;
mod session;
mod slot;
mod status;
mod tail;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use config::{Config, ConfigError};
pub use run::run;

/// `pgprism --version`: a build with crash points says so (the chaos tests check it).
const VERSION: &str = if cfg!(feature = "failpoints") {
    concat!(env!("CARGO_PKG_VERSION"), " (failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// Exit code for a run that failed (bad input, unreachable server, server error).
const EXIT_FAILURE: u8 = 1;

/// Change-data-capture for Postgres: reads the WAL through a logical replication slot and
/// keeps read models up to date.
///
/// Exit codes: 0 success, 1 runtime failure (the message says what and how to fix it),
/// 2 command-line usage error.
#[derive(Debug, Parser)]
#[command(name = "pgprism", version = VERSION, about, long_about)]
struct Cli {
    /// Log filter for stderr, e.g. `info` or `pgprism=debug` (overrides RUST_LOG).
    #[arg(long, global = true, env = "PGPRISM_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the election; the leader streams the slot into the read models, standbys wait.
    Run(run::RunArgs),
    /// Decode a replication slot and print one JSON object per change (JSONL).
    Tail(tail::TailArgs),
    /// Show the leader, epoch, slot position, retained WAL, and each target's offset and lag.
    Status(status::StatusArgs),
    /// Re-apply changes from a saved LSN (refused if the slot no longer holds that WAL).
    Replay(replay::ReplayArgs),
    /// Build a projection's read model again beside the live one, then swap it in.
    Rebuild(rebuild::RebuildArgs),
    /// Check config, connectivity, wal_level, slots, publication and privileges.
    Check(check::CheckArgs),
    /// Manage the replication slot and the publication.
    Slot(slot::SlotArgs),
    /// List dead letters (changes a target rejected), retry or discard them.
    Dlq(dlq::DlqArgs),
}

/// The `pgprism` command line: parse the arguments, log to stderr, run the command on a
/// one-thread runtime; an error is one line on stderr and exit code 1.
pub fn cli_main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    if let Err(e) = arm_failpoints() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    // One thread: pgprism's work is many small messages between its sessions (the stream,
    // the sinks, the source), each a hand-off between tasks. On one thread a hand-off is
    // a poll; across worker threads it is a futex wake-up and a context switch. Measured
    // with `benches/live_lag` (pgprism run under pgbench, 2 cores): 2 workers used 27–33%
    // of a core and the CPU they took from the walsender let the lag reach seconds at half
    // the machine's write capacity; one thread used 18–21% and kept it under 0.1 s.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run_command(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Rebuild(args) => rebuild::run(args).await,
            Command::Check(args) => check::run(args).await,
            Command::Slot(args) => slot::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error already says what failed and how to fix it.
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Arm the crash points `FAILPOINTS` names (`NAME=ACTIONS;…`, the `fail` crate's
/// syntax, e.g. `pg-before-offset-commit=2*off->return`: the third offset commit to a
/// Postgres sink aborts the process). A build without the `failpoints` feature refuses
/// the variable rather than ignore it.
fn arm_failpoints() -> Result<(), String> {
    let Some(spec) = std::env::var_os("FAILPOINTS") else {
        return Ok(());
    };
    let spec = spec
        .into_string()
        .map_err(|_| "FAILPOINTS is not valid UTF-8".to_owned())?;
    if !cfg!(feature = "failpoints") {
        return Err(format!(
            "FAILPOINTS={spec:?} is set, but this pgprism was built without the \
             `failpoints` feature (cargo build -p pgprism --features failpoints)"
        ));
    }
    #[cfg(feature = "failpoints")]
    for point in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, actions) = point
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS: {point:?}: want NAME=ACTIONS"))?;
        fail::cfg(name.trim(), actions.trim())
            .map_err(|e| format!("FAILPOINTS: {point:?}: {e}"))?;
    }
    Ok(())
}

/// The error and its causes on one line, each cause once (messages often quote their
/// cause already).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

fn init_logging(filter: &str) {
    // The transport logs the errors it returns to us; we report them once, ourselves.
    let filter = if filter.contains("pgwire_replication") {
        filter.to_owned()
    } else {
        format!("{filter},pgwire_replication=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
