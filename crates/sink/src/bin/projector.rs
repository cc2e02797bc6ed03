//! `pgprism-projector`: the projector as a process of its own, so that the chaos tests
//! (`tests/chaos.rs`) can kill -9 it at any moment, abort it at chosen crash points and
//! start it again. A test driver, not the product: the sidecar is `pgprism run` (issue 6,
//! `crates/pgprism`), with the election, slot takeover, metrics and the real
//! configuration. This driver stays until the chaos tests run `pgprism run` itself with
//! these crash points; meanwhile the epoch comes from the file and nothing checks that
//! only one of these runs at a time.
//!
//! It is the real pipeline over this crate's API, not a mock: [`Projector::start`]
//! (stamp the epoch on every target, read the offsets), open the stream at
//! [`Projector::resume_lsn`] (waiting while a dead predecessor's walsender still holds the
//! slot) and run [`drive`] until SIGTERM; then the final flush and acknowledgement, a
//! clean `shutdown` of the stream, exit 0. Any error: one `error …` line on stderr, exit 1.
//!
//! ```text
//! pgprism-projector CONFIG.toml
//! ```
//!
//! ```toml
//! pipeline = "shop"
//! epoch = 3                  # a new leader's epoch: larger than any before
//! replay_window = 0          # optional: bytes of WAL the slot keeps behind the sinks
//! takeover_after = "5s"      # optional: wait for a frozen predecessor's sink transaction
//! [source]
//! dsn = "postgres://app@db/shop"
//! slot = "pgprism"
//! publication = "pgprism"
//! chunk_changes = 4096       # optional: transactions are handed on in chunks this large
//! [sinks.pg]                 # as in pgprism_sink::spec
//! kind = "postgres"
//! dsn = "postgres://app@db/shop"
//! [[projections]]            # as in pgprism_sink::spec
//! # …
//! [batch]                    # optional, as in pgprism_sink::spec
//! ```
//!
//! Stdout has one line per event, for the tests: `ready resume_lsn=X epoch=N` once
//! streaming, then per flush `flush offset=X done=N changes=C written=W dead_letters=D
//! took_us=T`. Logs (`RUST_LOG`, default `info`) go to stderr.
//!
//! # Crash points
//!
//! The library has no failpoint hooks, so `PGPRISM_FAILPOINT` arms one from outside it.
//! Each aborts the process (SIGABRT: like kill -9, no destructor runs and no further byte
//! leaves on any socket) after printing `failpoint NAME hit: …` to stderr.
//!
//! - `after-sink-commit:N` — in `drive`'s `on_flush`, after the Nth flush that carried
//!   changes: the flush is durable in every target, the slot is not yet acknowledged. The
//!   next start must re-apply none of it (the offsets cover it) and skip none of what
//!   follows.
//! - `before-offset-commit:[SINK:]N` — the connections to sink `SINK` (to every sink, if
//!   none is named) go through a proxy in this process that reads what the projector
//!   sends, and aborts just before the Nth offset commit to them would leave. Postgres:
//!   the batch's rows are written in the open transaction, the offset update is not; the
//!   server rolls all of it back. Redis: the batch's guarded scripts have run, the offset
//!   has not moved; the next start delivers the batch again and the guards must keep
//!   every key where it is. The proxy knows an offset commit by what the leader crate
//!   sends: a statement updating `pgprism.offsets SET resume_lsn` (`fence.rs`), or the
//!   offset script's call with one key and `forward` as its direction argument
//!   (`redis_fence.rs`). Should those change, the failpoint never fires and the tests
//!   waiting for it fail.
//!
//! Every other point (inside a sink transaction, between two Redis scripts, during the
//! start) is left to kill -9 at random moments from the tests.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgprism_decoder::Lsn;
use pgprism_decoder::stream::{Backoff, ReplicationStream, StreamConfig};
use pgprism_leader::Epoch;
use pgprism_pg::Dsn;
use pgprism_sink::drive::{DriveOptions, drive};
use pgprism_sink::spec::{BackfillSpec, BatchSpec, ProjectionSpec, SinkKind, SinkSpec};
use pgprism_sink::{FlushReport, Projector, ProjectorConfig};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

const USAGE: &str = "usage: pgprism-projector CONFIG.toml   \
    (env: PGPRISM_FAILPOINT=after-sink-commit:N | before-offset-commit:[SINK:]N, RUST_LOG)";

/// How long a frozen predecessor's sink transaction is waited for by default.
const DEFAULT_TAKEOVER_AFTER: Duration = Duration::from_secs(5);

/// How long opening the stream is retried while the server says "not now" (the slot still
/// active under a walsender that is exiting, too many connections).
const OPEN_PATIENCE: Duration = Duration::from_secs(30);

/// How long the clean stop waits for the server to confirm the last acknowledgement.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// The configuration file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    pipeline: String,
    epoch: i64,
    #[serde(default)]
    replay_window: u64,
    #[serde(default, with = "humantime_serde")]
    takeover_after: Option<Duration>,
    source: Source,
    #[serde(default)]
    batch: BatchSpec,
    #[serde(default)]
    backfill: BackfillSpec,
    sinks: BTreeMap<String, SinkSpec>,
    projections: Vec<ProjectionSpec>,
}

/// `[source]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    dsn: String,
    slot: String,
    publication: String,
    /// Largest number of changes in one chunk of a transaction (default: the stream's).
    #[serde(default)]
    chunk_changes: Option<usize>,
}

/// A crash point from `PGPRISM_FAILPOINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failpoint {
    AfterSinkCommit {
        nth: u64,
    },
    /// `sink: None`: the Nth offset commit to any sink.
    BeforeOffsetCommit {
        sink: Option<String>,
        nth: u64,
    },
}

fn parse_failpoint(text: &str) -> Result<Failpoint, String> {
    let bad = || {
        format!(
            "PGPRISM_FAILPOINT={text:?}: want after-sink-commit:N or \
             before-offset-commit:[SINK:]N (N counts from 1)"
        )
    };
    let nth = |n: &str| n.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(bad);
    match text.split(':').collect::<Vec<_>>().as_slice() {
        ["after-sink-commit", n] => Ok(Failpoint::AfterSinkCommit { nth: nth(n)? }),
        ["before-offset-commit", n] => Ok(Failpoint::BeforeOffsetCommit {
            sink: None,
            nth: nth(n)?,
        }),
        ["before-offset-commit", sink, n] if !sink.is_empty() => {
            Ok(Failpoint::BeforeOffsetCommit {
                sink: Some((*sink).to_owned()),
                nth: nth(n)?,
            })
        }
        _ => Err(bad()),
    }
}

/// A crash point armed for its `nth` pass.
struct Tripwire {
    name: String,
    nth: u64,
    passed: AtomicU64,
}

impl Tripwire {
    fn new(name: &str, nth: u64) -> Arc<Tripwire> {
        Arc::new(Tripwire {
            name: name.to_owned(),
            nth,
            passed: AtomicU64::new(0),
        })
    }

    /// Count a pass; on the `nth`, abort the process then and there.
    fn pass(&self, what: impl FnOnce() -> String) {
        if self.passed.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            eprintln!("failpoint {} hit: {}", self.name, what());
            std::process::abort();
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    init_logging();
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
    let (file, failpoint) = match setup() {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("error {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(file, failpoint, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    // The stream reports the transport's errors itself.
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{filter},pgwire_replication=off"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}

/// The configuration file and the failpoint.
fn setup() -> Result<(File, Option<Failpoint>), String> {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        return Err("one argument: the configuration file".to_owned());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let failpoint = match std::env::var("PGPRISM_FAILPOINT") {
        Ok(text) if !text.is_empty() => Some(parse_failpoint(&text)?),
        _ => None,
    };
    Ok((file, failpoint))
}

async fn run(
    file: File,
    failpoint: Option<Failpoint>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let source = Dsn::parse(&file.source.dsn).map_err(|e| format!("source.dsn: {e}"))?;
    let mut sinks = file.sinks;
    let mut after_sink_commit = None;
    match &failpoint {
        Some(Failpoint::AfterSinkCommit { nth }) => {
            after_sink_commit = Some(Tripwire::new("after-sink-commit", *nth));
        }
        Some(Failpoint::BeforeOffsetCommit { sink: None, nth }) => {
            // One tripwire for all: it counts the offset commits to every sink.
            let trip = Tripwire::new("before-offset-commit", *nth);
            for (name, spec) in &mut sinks {
                intercept(name, spec, trip.clone()).await?;
            }
        }
        Some(Failpoint::BeforeOffsetCommit {
            sink: Some(sink),
            nth,
        }) => {
            let spec = sinks
                .get_mut(sink)
                .ok_or_else(|| format!("PGPRISM_FAILPOINT: no sink named {sink:?}"))?;
            let trip = Tripwire::new(&format!("before-offset-commit:{sink}"), *nth);
            intercept(sink, spec, trip).await?;
        }
        None => {}
    }
    let takeover_after = file.takeover_after.unwrap_or(DEFAULT_TAKEOVER_AFTER);
    let cfg = ProjectorConfig {
        pipeline: file.pipeline,
        epoch: Epoch(file.epoch),
        source: source.clone(),
        sinks,
        projections: file.projections,
        batch: file.batch,
        takeover_after,
        backfill: file.backfill,
    };
    let mut projector = Projector::start(&cfg).await.map_err(|e| e.to_string())?;
    let resume = projector.resume_lsn();
    let mut stream = open_stream(&source, &file.source, resume).await?;
    say(&format!("ready resume_lsn={resume} epoch={}", file.epoch));
    let opts = DriveOptions {
        replay_window: file.replay_window,
        until: None,
    };
    let on_flush = |r: &FlushReport| {
        say(&format!(
            "flush offset={} done={} changes={} written={} dead_letters={} took_us={}",
            r.offset.resume_lsn,
            r.offset.changes_done,
            r.changes,
            r.written,
            r.dead_letters,
            r.took.as_micros()
        ));
        if let Some(trip) = &after_sink_commit
            && r.changes > 0
        {
            trip.pass(|| {
                format!(
                    "offset {} (+{}) durable in every target, not acknowledged",
                    r.offset.resume_lsn, r.offset.changes_done
                )
            });
        }
    };
    drive(&mut projector, &mut stream, &mut stop, &opts, on_flush)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .shutdown(SHUTDOWN_DEADLINE)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Open the stream at `start`, retrying while the server says "not now": a killed
/// predecessor's walsender holds the slot until it notices the connection is gone.
async fn open_stream(
    source: &Dsn,
    names: &Source,
    start: Lsn,
) -> Result<ReplicationStream, String> {
    let mut cfg = StreamConfig::new(source.clone(), &names.slot, &names.publication);
    cfg.start_lsn = start;
    cfg.chunk_changes = names.chunk_changes.unwrap_or(cfg.chunk_changes).max(1);
    let deadline = Instant::now() + OPEN_PATIENCE;
    let backoff = Backoff::default();
    for attempt in 0.. {
        match ReplicationStream::open(cfg.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::info!(error = %e, "opening the stream; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    unreachable!("the loop returns")
}

/// Print an event line and flush it at once: the tests act on these lines.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // Nobody left to read it is no reason to stop projecting.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Put a proxy armed with `trip` between the projector and sink `name`: point the sink's
/// address at it.
async fn intercept(name: &str, spec: &mut SinkSpec, trip: Arc<Tripwire>) -> Result<(), String> {
    let refuse = |what: &str| format!("PGPRISM_FAILPOINT: sink {name:?}: {what}");
    match spec.kind {
        SinkKind::Postgres => {
            let dsn = Dsn::parse(spec.dsn.as_deref().unwrap_or_default())
                .map_err(|e| refuse(&e.to_string()))?;
            if dsn.tls().mode().requires_tls() || dsn.host().starts_with('/') {
                return Err(refuse(
                    "the proxy reads plain TCP only (no TLS, no unix socket)",
                ));
            }
            let port = listen(Wire::Postgres, dsn.host(), dsn.port(), trip).await?;
            let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
            let password = dsn
                .password()
                .map(|p| format!(" password={}", quote(p)))
                .unwrap_or_default();
            spec.dsn = Some(format!(
                "host=127.0.0.1 port={port} sslmode=disable user={} dbname={}{password}",
                quote(dsn.user()),
                quote(dsn.dbname())
            ));
        }
        SinkKind::Redis => {
            let url = spec.url.clone().unwrap_or_default();
            let (head, host, port, tail) = split_redis_url(&url)
                .ok_or_else(|| refuse("the proxy needs a redis://[auth@]host:port[/db] URL"))?;
            let local = listen(Wire::Redis, &host, port, trip).await?;
            spec.url = Some(format!("{head}127.0.0.1:{local}{tail}"));
        }
    }
    Ok(())
}

/// `redis://[auth@]host:port[/db]` as (`redis://[auth@]`, host, port, `[/db]`).
fn split_redis_url(url: &str) -> Option<(String, String, u16, String)> {
    let rest = url.strip_prefix("redis://")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let at = authority.rfind('@').map_or(0, |i| i + 1);
    let (auth, hostport) = authority.split_at(at);
    let (host, port) = hostport.rsplit_once(':')?;
    Some((
        format!("redis://{auth}"),
        host.to_owned(),
        port.parse().ok()?,
        tail.to_owned(),
    ))
}

/// The protocol a proxied connection speaks.
#[derive(Debug, Clone, Copy)]
enum Wire {
    Postgres,
    Redis,
}

/// Listen on a free local port and relay every connection to `host:port`; the port.
async fn listen(wire: Wire, host: &str, port: u16, trip: Arc<Tripwire>) -> Result<u16, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("failpoint proxy: binding a local port: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("failpoint proxy: {e}"))?
        .port();
    let upstream = Arc::new((host.to_owned(), port));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    tokio::spawn(relay(client, upstream.clone(), wire, trip.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "failpoint proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok(local)
}

/// One proxied connection: replies are copied as they come, requests are read message by
/// message so that the tripwire sees every offset commit before it leaves.
async fn relay(client: TcpStream, upstream: Arc<(String, u16)>, wire: Wire, trip: Arc<Tripwire>) {
    let server = match TcpStream::connect((upstream.0.as_str(), upstream.1)).await {
        Ok(server) => server,
        Err(e) => {
            // Dropping `client` tells the projector, which retries or fails as it would.
            tracing::warn!(error = %e, "failpoint proxy: connecting to the sink failed");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let replies = async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    let requests = async move {
        if let Err(e) = forward_requests(wire, &mut from_client, &mut to_server, &trip).await {
            tracing::debug!(error = %e, "failpoint proxy: connection ended");
        }
        let _ = to_server.shutdown().await;
    };
    tokio::join!(replies, requests);
}

async fn forward_requests(
    wire: Wire,
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    trip: &Tripwire,
) -> std::io::Result<()> {
    let mut framer = Framer {
        wire,
        startup: true,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    loop {
        buf.reserve(64 << 10);
        if from.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let (mut framed, mut sent) = (0, 0);
        while let Some((len, commit)) =
            framer.next(&buf[framed..]).map_err(std::io::Error::other)?
        {
            if commit {
                to.write_all(&buf[sent..framed]).await?;
                sent = framed;
                trip.pass(|| format!("the next {wire:?} offset commit was about to be sent"));
            }
            framed += len;
        }
        to.write_all(&buf[sent..framed]).await?;
        buf.drain(..framed);
    }
}

/// Splits a client's byte stream into protocol messages (sans-IO).
struct Framer {
    wire: Wire,
    /// Postgres: still before the startup message (whose length has no type byte first).
    startup: bool,
}

/// Postgres: the request codes of SSLRequest and GSSENCRequest, sent before the startup
/// message.
const PG_PRE_STARTUP: [u32; 2] = [80_877_103, 80_877_104];

/// Largest message accepted (Postgres' own limit for most messages is 1 GiB).
const MAX_MESSAGE: usize = 1 << 30;

impl Framer {
    /// The length of the first complete message in `buf` and whether it commits a sink
    /// offset; `None` while the message is incomplete.
    fn next(&mut self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        match self.wire {
            Wire::Postgres => self.next_pg(buf),
            Wire::Redis => next_resp(buf),
        }
    }

    fn next_pg(&mut self, buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
        let tag = usize::from(!self.startup);
        let Some(len) = buf.get(tag..tag + 4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(len.try_into().expect("four bytes")) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(format!("a Postgres message of length {len}"));
        }
        let Some(msg) = buf.get(..tag + len) else {
            return Ok(None);
        };
        if self.startup {
            let code = msg
                .get(4..8)
                .map(|c| u32::from_be_bytes(c.try_into().expect("four")));
            self.startup = code.is_some_and(|c| PG_PRE_STARTUP.contains(&c));
            return Ok(Some((msg.len(), false)));
        }
        // Parse: statement name, then the SQL, each NUL-terminated.
        let commit = msg[0] == b'P'
            && msg[5..]
                .split(|&b| b == 0)
                .nth(1)
                .and_then(|sql| std::str::from_utf8(sql).ok())
                .is_some_and(|sql| {
                    sql.contains("UPDATE pgprism.offsets") && sql.contains("SET resume_lsn")
                });
        Ok(Some((msg.len(), commit)))
    }
}

/// One RESP request (an array of bulk strings; an inline command is one line): its length,
/// and whether it is the fenced offset script (`EVALSHA sha 1 offset-key epoch lsn n
/// forward op state`).
fn next_resp(buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
    let line = |from: usize| -> Option<(&[u8], usize)> {
        let rest = buf.get(from..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((&rest[..end], from + end + 2))
    };
    let number = |text: &[u8]| -> Result<usize, String> {
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|&n| n <= MAX_MESSAGE)
            .ok_or_else(|| format!("a RESP length {:?}", String::from_utf8_lossy(text)))
    };
    let Some((head, mut at)) = line(0) else {
        return Ok(None);
    };
    let Some(count) = head.strip_prefix(b"*") else {
        return Ok(Some((at, false)));
    };
    let mut args = Vec::new();
    for _ in 0..number(count)? {
        let Some((head, start)) = line(at) else {
            return Ok(None);
        };
        let Some(len) = head.strip_prefix(b"$") else {
            return Err("a RESP request that is not an array of bulk strings".to_owned());
        };
        let end = start + number(len)?;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        args.push(&buf[start..end]);
        at = end + 2;
    }
    let commit = args.len() >= 4
        && (args[0].eq_ignore_ascii_case(b"EVALSHA") || args[0].eq_ignore_ascii_case(b"EVAL"))
        && args[2] == b"1"
        // EVALSHA sha 1 key epoch lsn n forward backfill-op backfill-state
        && args.get(7) == Some(&&b"forward"[..]);
    Ok(Some((at, commit)))
}
