//! `pgprism tail`: decode a slot and print one JSON object per change.
//!
//! What is printed is what is acknowledged: a transaction's end LSN is acknowledged only
//! after its last line reached stdout (flushed), so stopping at any point — SIGINT,
//! SIGTERM, `--limit`, a crash — never moves the slot past an unprinted change. A crash can
//! re-print what was printed but not yet acknowledged; a clean stop does not.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{
    Backoff, ReplicationStream, SlotCreation, StreamConfig, StreamEvent,
};
use pgprism_pg::Dsn;

use crate::jsonl;

/// How long a clean stop may take to hand the last acknowledgement to Postgres.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// Flush stdout once this much output is buffered.
const FLUSH_BYTES: usize = 256 << 10;
/// When the stream pauses, flush at most this late. Flushing on every pause would cost
/// one write (and, into a pipe, one wake-up of the reader) per transaction.
const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// Arguments of `pgprism tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Source database, `postgres://user:password@host:port/db` or `key=value` form.
    #[arg(long, env = "PGPRISM_SOURCE_DSN", hide_env_values = true)]
    dsn: String,
    /// Logical replication slot to read.
    #[arg(long, default_value = "pgprism")]
    slot: String,
    /// Publication that selects the tables.
    #[arg(long, default_value = "pgprism")]
    publication: String,
    /// Create the slot if it does not exist.
    #[arg(long)]
    create_slot: bool,
    /// With --create-slot: a temporary slot, dropped when tail exits.
    #[arg(long, requires = "create_slot")]
    temporary: bool,
    /// Create the publication for these tables (schema.table, comma-separated) if missing.
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Start at this LSN (X/Y) instead of where the slot is.
    #[arg(long, value_name = "LSN")]
    from_lsn: Option<String>,
    /// Stop after printing this many changes.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Stop at this LSN (X/Y), like pg_recvlogical's --endpos: transactions whose commit
    /// record starts before it are printed, then tail exits. `SELECT pg_current_wal_lsn()`
    /// taken after some writes makes tail print exactly those writes.
    #[arg(long, value_name = "LSN")]
    until_lsn: Option<String>,
    /// Peek: never acknowledge, so the slot does not advance.
    #[arg(long)]
    no_ack: bool,
    /// Stop instead of reconnecting once the server was unreachable this long (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    give_up_after: Option<Duration>,
}

fn parse_lsn(arg: &str, value: &Option<String>) -> anyhow::Result<Option<Lsn>> {
    value
        .as_deref()
        .map(|v| v.parse::<Lsn>().with_context(|| format!("--{arg}")))
        .transpose()
}

/// Parse `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use a number and a unit, like 5s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: the unit must be ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Run `tail` until its limit, its end LSN, or a signal.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let from_lsn = parse_lsn("from-lsn", &args.from_lsn)?;
    let until_lsn = parse_lsn("until-lsn", &args.until_lsn)?;
    let dsn = Dsn::parse(&args.dsn)?;
    let mut cfg = StreamConfig::new(dsn, args.slot, args.publication);
    cfg.start_lsn = from_lsn.unwrap_or(Lsn::ZERO);
    cfg.acknowledge = !args.no_ack;
    cfg.create_slot = args.create_slot.then_some(SlotCreation {
        temporary: args.temporary,
    });
    if !args.tables.is_empty() {
        cfg.create_publication_for = Some(args.tables);
    }
    cfg.reconnect = Backoff {
        give_up_after: args.give_up_after,
        ..Backoff::default()
    };

    let mut stream = ReplicationStream::open(cfg).await?;
    let info = stream.info().clone();
    if let Some(from) = from_lsn
        && from < info.confirmed_flush
    {
        tracing::warn!(requested = %from, confirmed = %info.confirmed_flush,
            "the slot already confirmed a later position; Postgres resumes from there");
    }
    tracing::info!(start = %info.start_lsn, slot_created = info.slot_created, "streaming");
    let acker = stream.acker();
    let mut signals = Signals::new()?;

    let stdout = std::io::stdout();
    let mut out = Vec::with_capacity(FLUSH_BYTES * 2);
    // Acknowledge a transaction's end only after its lines are flushed.
    let mut unflushed_ack: Option<Lsn> = None;
    let mut printed: u64 = 0;
    let limit = args.limit.unwrap_or(u64::MAX);

    let flush = |out: &mut Vec<u8>, unflushed_ack: &mut Option<Lsn>| -> anyhow::Result<()> {
        if !out.is_empty() {
            let mut lock = stdout.lock();
            lock.write_all(out)
                .and_then(|()| lock.flush())
                .context("writing to stdout")?;
            out.clear();
        }
        if let Some(lsn) = unflushed_ack.take() {
            acker.ack(lsn);
        }
        Ok(())
    };

    let mut flush_at: Option<tokio::time::Instant> = None;
    let outcome: anyhow::Result<()> = async {
        if limit == 0 {
            return Ok(());
        }
        loop {
            let ev = tokio::select! {
                // A signal wins over more data: stop promptly, with what is printed acked.
                // Then the flush deadline, so output never waits behind a busy stream.
                biased;
                sig = signals.recv() => {
                    tracing::info!(signal = sig, "stopping");
                    return Ok(());
                }
                () = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    flush_at = None;
                    flush(&mut out, &mut unflushed_ack)?;
                    continue;
                }
                ev = stream.next() => ev?,
            };
            match ev {
                StreamEvent::Chunk(chunk) => {
                    if until_lsn.is_some_and(|u| chunk.txn.commit_lsn >= u) {
                        return Ok(());
                    }
                    let take = usize::try_from(limit - printed).unwrap_or(usize::MAX);
                    let whole = chunk.changes.len() <= take;
                    for change in chunk.changes.iter().take(take) {
                        jsonl::write_change(&mut out, &chunk.txn, change);
                    }
                    printed += chunk.changes.len().min(take) as u64;
                    if let Some(end) = chunk.end.filter(|_| whole) {
                        unflushed_ack = Some(end.end_lsn);
                        // Every later transaction commits after this one ends.
                        if until_lsn.is_some_and(|u| end.end_lsn >= u) {
                            return Ok(());
                        }
                    }
                    if printed >= limit {
                        return Ok(());
                    }
                    if out.len() >= FLUSH_BYTES {
                        flush_at = None;
                        flush(&mut out, &mut unflushed_ack)?;
                    }
                }
                StreamEvent::Message(msg) => {
                    if until_lsn.is_some_and(|u| msg.lsn >= u) {
                        return Ok(());
                    }
                    jsonl::write_message(&mut out, None, &msg);
                    printed += 1;
                    unflushed_ack = Some(Lsn(msg.lsn.0 + 1));
                    if printed >= limit {
                        return Ok(());
                    }
                }
                StreamEvent::Idle => {
                    if flush_at.is_none() {
                        flush_at = Some(tokio::time::Instant::now() + FLUSH_DELAY);
                    }
                }
                StreamEvent::Keepalive { wal_end } => {
                    flush_at = None;
                    flush(&mut out, &mut unflushed_ack)?;
                    if until_lsn.is_some_and(|u| wal_end >= u) {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;

    // Whatever ended the loop, what was printed is flushed and acknowledged before the
    // session ends (a write error leaves the unflushed part unacknowledged).
    let flushed = flush(&mut out, &mut unflushed_ack);
    let acked = stream.shutdown(SHUTDOWN_DEADLINE).await;
    outcome?;
    flushed?;
    let acked = acked?;
    tracing::info!(printed, acked = %acked, peak_rss_kb = peak_rss_kb(), "stopped");
    Ok(())
}

/// The process's peak resident set size (`VmHWM`), for the memory-bound checks.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn bad_lsn_names_the_flag() {
        let err = parse_lsn("from-lsn", &Some("nope".into())).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("--from-lsn") && text.contains("invalid LSN"),
            "{text}"
        );
    }
}
