//! Backfill: the rows that existed before a target joined the pipeline, loaded while the
//! stream keeps flowing.
//!
//! **How.** A target whose offset row is created by this leader (a new pipeline, or a
//! projection added to a running one) starts with a backfill state. Each flush of its lane
//! may carry one **chunk**: the next `chunk_size` rows of a source table in key order
//! (keyset pagination, `WHERE (key) > (last key) ORDER BY key LIMIT n`, read with `COPY`),
//! written in the same sink transaction as the batch of streamed changes, and the scan's
//! position is committed with the offset in that transaction. A kill at any point resumes
//! from the last committed chunk; committed chunks are never read again. The source sees
//! only short reads: no locks beyond a scan's, no writes.
//!
//! **Consistency with the stream.**
//! - Query projections: a chunk is a set of keys to recompute, added to the batch's keys.
//!   The recompute reads the source's current state (see `query::resolve`), as for any
//!   change, so a read model never goes back.
//! - Mirrors: the chunk is read in a REPEATABLE READ snapshot taken only once every
//!   transaction of the batch is visible in it, so the chunk's rows are at least as new as
//!   everything the flush writes; they are merged into the batch after its changes (later
//!   wins). Transactions visible in that snapshot but streamed *after* the flush's position
//!   carry older values of the chunk's rows: the lane's next flush therefore ends at or
//!   past the snapshot's WAL position (the *window*), so those transactions and the newer
//!   ones after them are committed together and readers never see the older values.
//!
//! The chunk's position for Redis guards sits between the batch's last change and the
//! stream's next one.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::TryStreamExt;
use pgprism_decoder::Lsn;
use pgprism_leader::Offset;
use pgprism_pg::{quote_ident, quote_literal};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::batch::Position;
use crate::error::SinkError;
use crate::spec::BackfillSpec;

/// The persisted state of a target's backfill (JSON in the offset row / hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillState {
    /// `running` or `done`.
    pub state: Phase,
    /// The source table being scanned (index into the scan plan).
    pub table: usize,
    /// The key of the last row copied from it (`None`: from the start).
    pub after: Option<Vec<String>>,
    /// Rows read so far.
    pub rows: u64,
    /// Chunks committed so far.
    pub chunks: u64,
    /// Unix seconds when it started.
    pub started_at: u64,
    /// Unix seconds when it finished.
    pub finished_at: Option<u64>,
    /// The planner's estimate of the rows to read in all, when the last chunk was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<u64>,
    /// Mirrors: the source's WAL position when the last chunk's snapshot was taken (the
    /// target's next flush must end past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Set by `pgprism rebuild` on a shadow target: swap it with `table` when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_of: Option<String>,
}

/// Where a backfill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Chunks remain.
    Running,
    /// Every row was loaded.
    Done,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BackfillState {
    /// A backfill about to start.
    pub fn start() -> BackfillState {
        BackfillState {
            state: Phase::Running,
            table: 0,
            after: None,
            rows: 0,
            chunks: 0,
            started_at: unix_now(),
            finished_at: None,
            estimate: None,
            window: None,
            rebuild_of: None,
        }
    }

    /// As stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    /// From storage; `what` names the target for the error.
    pub fn parse(what: &str, text: &str) -> Result<BackfillState, SinkError> {
        serde_json::from_str(text).map_err(|e| {
            SinkError::config(
                what,
                format!("its stored backfill state {text:?} is not readable: {e}"),
            )
        })
    }

    /// Whether chunks remain.
    pub fn running(&self) -> bool {
        self.state == Phase::Running
    }

    /// One line for `pgprism status`: `running: 12000 of ~200000 rows (6%)`,
    /// `done: 200000 rows in 41 s`.
    pub fn summary(&self) -> String {
        match self.state {
            Phase::Running => match self.estimate.filter(|&e| e > 0) {
                Some(e) => format!(
                    "running: {} of ~{e} rows ({}%)",
                    self.rows,
                    (self.rows * 100 / e).min(100)
                ),
                None => format!("running: {} rows", self.rows),
            },
            Phase::Done => match self.finished_at {
                Some(f) => format!(
                    "done: {} rows in {} s",
                    self.rows,
                    f.saturating_sub(self.started_at)
                ),
                None => format!("done: {} rows", self.rows),
            },
        }
    }
}

/// One source table a backfill scans, in key order.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    /// `schema.table`, for messages.
    pub(crate) name: String,
    /// Quoted `"schema"."table"`.
    quoted: String,
    /// Quoted key columns (the scan's order).
    key: Vec<String>,
    /// Quoted columns read after the key columns.
    payload: Vec<String>,
    /// For a query projection: which of its mapped tables this is.
    pub(crate) source_index: usize,
}

impl Scan {
    /// Scan `schema.table` by `key`, reading `payload` columns too.
    pub(crate) fn new(
        schema: &str,
        table: &str,
        key: &[String],
        payload: &[String],
        source_index: usize,
    ) -> Scan {
        Scan {
            name: format!("{schema}.{table}"),
            quoted: format!("{}.{}", quote_ident(schema), quote_ident(table)),
            key: key.iter().map(|c| quote_ident(c)).collect(),
            payload: payload.iter().map(|c| quote_ident(c)).collect(),
            source_index,
        }
    }

    /// The `COPY` of the `limit` rows after `after`, key columns first.
    fn copy_sql(&self, after: Option<&[String]>, limit: usize) -> String {
        let cols: Vec<&str> = self
            .key
            .iter()
            .chain(&self.payload)
            .map(String::as_str)
            .collect();
        let key = self.key.join(", ");
        let filter = match after {
            Some(after) => format!(
                " WHERE ({key}) > ({})",
                after
                    .iter()
                    .map(|v| quote_literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        format!(
            "COPY (SELECT {} FROM {}{filter} ORDER BY {key} LIMIT {limit}) TO STDOUT",
            cols.join(", "),
            self.quoted
        )
    }
}

/// Rows of one chunk: key columns, then payload columns (text form, `None` for NULL).
pub(crate) type ChunkRow = Vec<Option<Bytes>>;

/// A chunk read from the source.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    /// Query projections: the mapped source table it scanned.
    pub(crate) source_index: usize,
    /// Its rows' payload columns (the key columns stripped unless they are the payload).
    pub(crate) rows: Vec<ChunkRow>,
    /// The state once it is committed.
    pub(crate) next: BackfillState,
    /// Mirrors: the source's WAL position when the chunk's snapshot was taken.
    pub(crate) window: Option<Lsn>,
}

/// A lane's backfill: the plan, the committed state and the pacing.
#[derive(Debug)]
pub(crate) struct Backfill {
    /// The tables scanned, in order (a mirror's one scan is built again from its current
    /// relation at each read).
    scans: Vec<Scan>,
    pub(crate) state: BackfillState,
    chunk_size: usize,
    rows_per_second: Option<f64>,
    next_at: Instant,
    /// Mirrors: the lane's next flush must end at or past this position (see the module
    /// documentation).
    pub(crate) window: Option<Lsn>,
    /// Rows the scanned tables held at start (planner estimate).
    pub(crate) estimate: u64,
    /// For the progress line: when it was last logged, and the rows then.
    logged: (Instant, u64),
    started: Instant,
    rows_at_start: u64,
}

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Backfill {
    pub(crate) fn new(
        scans: Vec<Scan>,
        state: BackfillState,
        spec: &BackfillSpec,
        estimate: u64,
    ) -> Backfill {
        let now = Instant::now();
        Backfill {
            scans,
            chunk_size: spec.chunk_size.max(1),
            rows_per_second: (spec.rows_per_second > 0).then_some(spec.rows_per_second as f64),
            next_at: now,
            window: state.window.as_deref().and_then(|w| w.parse().ok()),
            estimate,
            logged: (now, state.rows),
            started: now,
            rows_at_start: state.rows,
            state,
        }
    }

    /// Whether a chunk should go with the next flush. Inside a window only while the lane
    /// holds no changes (`pending`): those must wait for the stream to pass the window,
    /// and a chunk would commit them; with none, the next chunk only widens the window.
    pub(crate) fn due(&self, now: Instant, pending: bool) -> bool {
        self.state.running() && (self.window.is_none() || !pending) && now >= self.next_at
    }

    /// When the next chunk may go (`None`: none will).
    pub(crate) fn next_at(&self, pending: bool) -> Option<Instant> {
        (self.state.running() && (self.window.is_none() || !pending)).then_some(self.next_at)
    }

    /// Rows left, by the planner's estimate.
    pub(crate) fn remaining(&self) -> u64 {
        if self.state.running() {
            self.estimate.saturating_sub(self.state.rows)
        } else {
            0
        }
    }

    /// The scan of the table the backfill is at (query projections).
    pub(crate) fn current_scan(&self) -> Option<&Scan> {
        self.scans.get(self.state.table)
    }

    /// Read the next chunk of `scan` (`None`: no table left) on `source`, inside
    /// whatever snapshot the caller opened. With `window`, also note the WAL position
    /// (mirrors).
    pub(crate) async fn read(
        &self,
        source: &Client,
        target: &str,
        scan: Option<&Scan>,
        window: bool,
    ) -> Result<Chunk, SinkError> {
        let mut next = self.state.clone();
        let scan = match scan {
            Some(s) if next.table < self.scans.len() => s,
            _ => {
                next.state = Phase::Done;
                next.finished_at = Some(unix_now());
                return Ok(Chunk {
                    source_index: 0,
                    rows: Vec::new(),
                    next,
                    window: None,
                });
            }
        };
        let window = if window {
            let lsn: String = source
                .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                .await
                .map_err(SinkError::pg(target, "reading the source's WAL position"))?
                .get(0);
            Some(lsn.parse().map_err(|e| {
                SinkError::config(target, format!("the source's WAL position {lsn:?}: {e}"))
            })?)
        } else {
            None
        };
        let sql = scan.copy_sql(next.after.as_deref(), self.chunk_size);
        let rows = copy_rows(source, &sql)
            .await
            .map_err(SinkError::pg(target, "reading a backfill chunk"))?;
        let keys = scan.key.len();
        if let Some(last) = rows.last() {
            let after: Option<Vec<String>> = last[..keys]
                .iter()
                .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                .collect();
            let Some(after) = after else {
                return Err(SinkError::config(
                    target,
                    format!(
                        "a key column of {} is null in some row; backfill scans need non-null keys",
                        scan.name
                    ),
                ));
            };
            next.after = Some(after);
        }
        next.rows += rows.len() as u64;
        next.chunks += 1;
        next.estimate = Some(self.estimate.max(next.rows));
        next.window = window.map(|w: Lsn| w.to_string());
        if rows.len() < self.chunk_size {
            // This table is done: the next one from its start, or the end.
            next.table += 1;
            next.after = None;
            if next.table >= self.scans.len() {
                next.state = Phase::Done;
                next.finished_at = Some(unix_now());
            }
        }
        Ok(Chunk {
            source_index: scan.source_index,
            rows: rows.into_iter().map(|r| r[keys..].to_vec()).collect(),
            next,
            window,
        })
    }

    /// A chunk's rows and state are durable.
    pub(crate) fn committed(&mut self, target: &str, chunk: &Chunk) {
        let rows = chunk.next.rows - self.state.rows;
        self.state = chunk.next.clone();
        self.window = self.window.max(chunk.window);
        if let Some(rate) = self.rows_per_second {
            self.next_at = Instant::now() + Duration::from_secs_f64(rows as f64 / rate);
        }
        metrics::counter!("pgprism_backfill_rows_total", "target" => target.to_owned())
            .increment(rows);
        metrics::gauge!("pgprism_backfill_remaining_estimate", "target" => target.to_owned())
            .set(self.remaining() as f64);
        let now = Instant::now();
        if !self.state.running() {
            let took = self.started.elapsed();
            let done = self.state.rows - self.rows_at_start;
            tracing::info!(
                target_name = %target, rows = self.state.rows, chunks = self.state.chunks,
                took = ?took, rows_per_s = (done as f64 / took.as_secs_f64().max(1e-3)) as u64,
                "backfill done"
            );
        } else if now.duration_since(self.logged.0) >= PROGRESS_EVERY {
            let rate = (self.state.rows - self.logged.1) as f64
                / now.duration_since(self.logged.0).as_secs_f64();
            let eta = (rate > 0.0).then(|| Duration::from_secs_f64(self.remaining() as f64 / rate));
            tracing::info!(
                target_name = %target, rows = self.state.rows, chunks = self.state.chunks,
                table = self.scans.get(self.state.table).map_or("", |s| s.name.as_str()),
                rows_per_s = rate as u64, remaining_estimate = self.remaining(),
                eta = ?eta.map(|d| Duration::from_secs(d.as_secs())),
                "backfill progress"
            );
            self.logged = (now, self.state.rows);
        }
    }

    /// The window is closed: the lane flushed past it (or the stream showed everything
    /// before it arrived).
    pub(crate) fn close_window(&mut self, to: Offset, head: Lsn) {
        if let Some(w) = self.window
            && (to.resume_lsn >= w || head >= w)
        {
            self.window = None;
        }
    }

    /// Whether a flush to `to` must wait (mirrors: it would split the window).
    pub(crate) fn holds(&self, to: Offset, head: Lsn) -> bool {
        self.window.is_some_and(|w| to.resume_lsn < w && head < w)
    }
}

/// The position a chunk's rows carry (Redis guards): after every change routed up to
/// `to`, before every change the stream delivers after it.
pub(crate) fn chunk_position(to: Offset) -> Position {
    if to.changes_done == 0 {
        // The next transaction's commit record starts at or after `to`.
        Position {
            commit_lsn: Lsn(to.resume_lsn.0.saturating_sub(1)),
            seq: u64::MAX,
        }
    } else {
        Position {
            commit_lsn: to.resume_lsn,
            seq: to.changes_done - 1,
        }
    }
}

/// The rows a `COPY … TO STDOUT` (text format) returns.
async fn copy_rows(source: &Client, sql: &str) -> Result<Vec<ChunkRow>, tokio_postgres::Error> {
    let stream = source.copy_out(sql).await?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    let mut rest: Vec<u8> = Vec::new();
    while let Some(data) = stream.try_next().await? {
        let mut data: &[u8] = &data;
        if !rest.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    rest.extend_from_slice(&data[..nl]);
                    rows.push(parse_copy_line(&rest));
                    rest.clear();
                    data = &data[nl + 1..];
                }
                None => {
                    rest.extend_from_slice(data);
                    continue;
                }
            }
        }
        let mut lines = data.split(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            if lines.peek().is_none() {
                // The last piece: a whole line only if the data ended with a newline.
                rest.extend_from_slice(line);
            } else {
                rows.push(parse_copy_line(line));
            }
        }
    }
    if !rest.is_empty() {
        rows.push(parse_copy_line(&rest));
    }
    Ok(rows)
}

/// One line of `COPY` text format: tab-separated fields, `\N` for NULL, backslash escapes.
pub(crate) fn parse_copy_line(line: &[u8]) -> ChunkRow {
    line.split(|&b| b == b'\t')
        .map(|field| {
            if field == b"\\N" {
                return None;
            }
            if !field.contains(&b'\\') {
                return Some(Bytes::copy_from_slice(field));
            }
            let mut out = Vec::with_capacity(field.len());
            let mut i = 0;
            while i < field.len() {
                let b = field[i];
                if b != b'\\' || i + 1 == field.len() {
                    out.push(b);
                    i += 1;
                    continue;
                }
                let c = field[i + 1];
                i += 2;
                match c {
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(11),
                    b'0'..=b'7' => {
                        let mut v = u32::from(c - b'0');
                        let mut n = 1;
                        while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                            v = v * 8 + u32::from(field[i] - b'0');
                            i += 1;
                            n += 1;
                        }
                        out.push(v as u8);
                    }
                    b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                            v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                            i += 1;
                            n += 1;
                        }
                        out.push(v as u8);
                    }
                    other => out.push(other),
                }
            }
            Some(Bytes::from(out))
        })
        .collect()
}

/// The planner's row estimate for `tables` (0 for one never analyzed or vacuumed).
pub(crate) async fn estimate(source: &Client, tables: &[Scan]) -> u64 {
    let mut total = 0u64;
    for s in tables {
        let n: Option<i64> = source
            .query_opt(
                "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass",
                &[&s.quoted],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        total += n.unwrap_or(0).max(0) as u64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_unescape_like_postgres() {
        let row = parse_copy_line(b"1\t\\N\ta\\tb\\\\c\\nd\t\\101\\x42");
        let text: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
        assert_eq!(
            text,
            vec![
                Some(&b"1"[..]),
                None,
                Some(&b"a\tb\\c\nd"[..]),
                Some(&b"AB"[..])
            ]
        );
        assert_eq!(parse_copy_line(b""), vec![Some(Bytes::new())]);
    }

    #[test]
    fn chunk_positions_sit_between_routed_and_next_changes() {
        let after = chunk_position(Offset::after_transaction(Lsn(100)));
        assert!(
            after
                > Position {
                    commit_lsn: Lsn(99),
                    seq: 5
                }
        );
        assert!(
            after
                < Position {
                    commit_lsn: Lsn(100),
                    seq: 0
                }
        );
        let inside = chunk_position(Offset::inside_transaction(Lsn(100), 3));
        assert!(
            inside
                >= Position {
                    commit_lsn: Lsn(100),
                    seq: 2
                }
        );
        assert!(
            inside
                < Position {
                    commit_lsn: Lsn(100),
                    seq: 3
                }
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = BackfillState::start();
        s.after = Some(vec!["a'b".into(), "2".into()]);
        s.rows = 10;
        assert_eq!(BackfillState::parse("t", &s.to_json()).unwrap(), s);
        assert!(BackfillState::parse("t", "nope").is_err());
    }
}
