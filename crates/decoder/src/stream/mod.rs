//! The replication session: a logical replication slot read through `pgwire-replication`,
//! decoded with [`crate::pgoutput`], handed on as bounded chunks of transactions.
//!
//! **Checks first.** Before streaming, the session checks `wal_level`, the publication and
//! the slot, and says what is wrong and how to fix it. It can create the publication (from
//! a table list) and the slot (optionally temporary, optionally exporting a snapshot).
//!
//! **Acknowledgements.** The consumer reports what is durable through an [`Acker`]; only
//! that is ever sent to Postgres as the flush position, so the slot never moves past
//! anything the consumer has not made durable. When the consumer has acknowledged
//! everything handed on and no transaction is open, an idle keepalive's `wal_end` is
//! acknowledged too: without that, an idle database's slot never advances and WAL piles up
//! (and a fast shutdown of Postgres waits for us). A transaction committing later has its
//! commit record after `wal_end`, so nothing is skipped.
//!
//! **Clean stop.** `pgwire-replication` does not send the pending acknowledgement before
//! CopyDone, so [`ReplicationStream::shutdown`] waits until a status update carried the
//! last acknowledged position, and if none did in time, advances the slot over a plain
//! connection once the walsender let go of it.
//!
//! **Reconnect.** Transient failures (IO errors, a restarting server, a slot still held by
//! a dying walsender; decided by [`StreamError::class`]) reconnect with exponential backoff
//! and jitter from the last acknowledged position; the assembler (`assemble.rs`) drops what was
//! already handed on, so the consumer sees every transaction once.
//!
//! **What a crash leaves.** Nothing is acknowledged before the consumer says it is
//! durable, so a crash at any point re-delivers at most what was not yet acknowledged.

mod assemble;
mod backoff;
mod error;
mod source;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::watch;

pub use assemble::{Change, ChangeKind, TxnChunk, TxnEnd, TxnInfo};
pub use backoff::Backoff;
pub use error::{ErrorClass, StreamError, sqlstate_class};
use pgprism_pg::{Dsn, SslMode, error_text, quote_ident, quote_literal};
pub use source::{validate_publication_name, validate_slot_name};

use crate::Lsn;
use crate::pgoutput::LogicalMessage;
use assemble::{Assembled, Assembler, ChunkLimits, WireEvent};

/// Session settings pinned on the walsender so text values have one format:
/// ISO dates, Postgres-style intervals, UTC, and floats that round-trip.
const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3";

/// Default largest number of changes in one chunk.
pub const DEFAULT_CHUNK_CHANGES: usize = 4096;
/// Default largest number of payload bytes in one chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 16 << 20;
/// Default interval between standby status updates: short, so acknowledgements reach
/// Postgres promptly (less retained WAL, a quick clean stop); ten small messages a second
/// cost the walsender nothing measurable.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// How many transport events may wait between the socket and the assembler.
const TRANSPORT_BUFFER_EVENTS: usize = 2048;

/// How to create the slot when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCreation {
    /// A temporary slot lives only as long as its session (it cannot survive a reconnect).
    pub temporary: bool,
}

/// A backfill run under the snapshot exported when the slot is created: it gets the
/// snapshot's name (for `SET TRANSACTION SNAPSHOT`) and must finish reading before it
/// returns, because the snapshot ends when streaming starts.
pub type Backfill<'a> = Box<
    dyn FnOnce(String) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> + Send + 'a,
>;

/// Everything a replication session needs.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The source database.
    pub dsn: Dsn,
    /// The logical replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Where to start (`Lsn::ZERO`: where the slot is).
    pub start_lsn: Lsn,
    /// Create the slot if it is missing.
    pub create_slot: Option<SlotCreation>,
    /// Create the publication for these tables (`schema.table`) if it is missing.
    pub create_publication_for: Option<Vec<String>>,
    /// Send acknowledgements at all (`false`: peek without moving the slot).
    pub acknowledge: bool,
    /// Largest number of changes in one chunk.
    pub chunk_changes: usize,
    /// Largest number of payload bytes in one chunk.
    pub chunk_bytes: usize,
    /// Interval between standby status updates.
    pub status_interval: Duration,
    /// Reconnect policy after the session was established.
    pub reconnect: Backoff,
    /// `application_name` of the replication connection.
    pub application_name: String,
}

impl StreamConfig {
    /// A config with defaults for everything but the source, slot and publication.
    pub fn new(dsn: Dsn, slot: impl Into<String>, publication: impl Into<String>) -> Self {
        StreamConfig {
            dsn,
            slot: slot.into(),
            publication: publication.into(),
            start_lsn: Lsn::ZERO,
            create_slot: None,
            create_publication_for: None,
            acknowledge: true,
            chunk_changes: DEFAULT_CHUNK_CHANGES,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            status_interval: DEFAULT_STATUS_INTERVAL,
            reconnect: Backoff::default(),
            application_name: "pgprism".to_owned(),
        }
    }
}

/// What the checks found when the session opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The slot was created by this session.
    pub slot_created: bool,
    /// The publication was created by this session.
    pub publication_created: bool,
    /// The slot's confirmed position before we started (the slot's creation point if new).
    pub confirmed_flush: Lsn,
    /// The exported snapshot's name, when a backfill asked for one.
    pub snapshot: Option<String>,
    /// Where streaming starts: the later of the requested start and the slot's position.
    pub start_lsn: Lsn,
}

/// What the stream hands on.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// A piece of a transaction (the last piece carries the commit).
    Chunk(TxnChunk),
    /// A non-transactional logical message. Acknowledge `lsn + 1` once handled.
    Message(LogicalMessage),
    /// Nothing more is buffered right now: a good moment to flush and acknowledge.
    Idle,
    /// The server's keepalive, between transactions: every transaction that committed
    /// before `wal_end` has been handed on.
    Keepalive {
        /// The server's current WAL position.
        wal_end: Lsn,
    },
}

/// Reports durable positions to the stream; cheap to clone and use from any task.
#[derive(Debug, Clone)]
pub struct Acker {
    acked: Arc<AtomicU64>,
    notify: watch::Sender<()>,
}

impl Acker {
    /// Everything up to `lsn` is durable at the consumer. Never moves backwards.
    pub fn ack(&self, lsn: Lsn) {
        if self.acked.fetch_max(lsn.0, Ordering::AcqRel) < lsn.0 {
            self.notify.send_replace(());
        }
    }

    /// The highest position acknowledged so far.
    pub fn acked(&self) -> Lsn {
        Lsn(self.acked.load(Ordering::Acquire))
    }
}

/// A logical replication session with reconnects; see the module docs.
pub struct ReplicationStream {
    cfg: StreamConfig,
    client: ReplicationClient,
    assembler: Assembler,
    acker: Acker,
    ack_changed: watch::Receiver<()>,
    /// The last position passed to the transport.
    sent_ack: Lsn,
    /// Something was handed on since the last `Idle`.
    owe_idle: bool,
    /// The last keepalive position seen between transactions.
    idle_wal_end: Lsn,
    info: SessionInfo,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("dsn", &self.cfg.dsn)
            .field("slot", &self.cfg.slot)
            .field("publication", &self.cfg.publication)
            .field("acked", &self.acker.acked())
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// Check the source, create what the config asks for, and start streaming.
    ///
    /// Fails fast: a caller that wants to wait for the server retries on
    /// [`StreamError::is_transient`].
    pub async fn open(cfg: StreamConfig) -> Result<ReplicationStream, StreamError> {
        Self::open_inner(cfg, None).await
    }

    /// Create the slot with an exported snapshot, run `backfill` under that snapshot, then
    /// stream from the slot's consistent point. What the backfill reads plus what the
    /// stream delivers is every row exactly once: the snapshot shows exactly the
    /// transactions committed before the slot's starting point.
    ///
    /// The slot must not exist yet (a snapshot is exported only when a slot is created),
    /// and `create_slot` must be set.
    pub async fn open_with_backfill(
        cfg: StreamConfig,
        backfill: Backfill<'_>,
    ) -> Result<ReplicationStream, StreamError> {
        if cfg.create_slot.is_none() {
            return Err(StreamError::Config(
                "a backfill needs create_slot: the snapshot is exported when the slot is created"
                    .to_owned(),
            ));
        }
        Self::open_inner(cfg, Some(backfill)).await
    }

    async fn open_inner(
        cfg: StreamConfig,
        backfill: Option<Backfill<'_>>,
    ) -> Result<ReplicationStream, StreamError> {
        validate_slot_name(&cfg.slot)?;
        validate_publication_name(&cfg.publication)?;
        if cfg.chunk_changes == 0 || cfg.chunk_bytes == 0 {
            return Err(StreamError::Config(
                "chunk limits must be at least 1".to_owned(),
            ));
        }
        let (client, info) = start_session(&cfg, cfg.start_lsn, Session::First(backfill)).await?;
        let (notify, ack_changed) = watch::channel(());
        let acker = Acker {
            acked: Arc::new(AtomicU64::new(0)),
            notify,
        };
        let assembler = Assembler::new(
            ChunkLimits {
                max_changes: cfg.chunk_changes,
                max_bytes: cfg.chunk_bytes,
            },
            info.start_lsn,
        );
        Ok(ReplicationStream {
            cfg,
            client,
            assembler,
            acker,
            ack_changed,
            sent_ack: Lsn::ZERO,
            owe_idle: false,
            idle_wal_end: Lsn::ZERO,
            info,
        })
    }

    /// What the checks found when the session first opened.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// A handle to report durable positions.
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// The next chunk, message, or `Idle`. Reconnects on transient failures.
    pub async fn next(&mut self) -> Result<StreamEvent, StreamError> {
        loop {
            self.forward_ack();
            let ev = if self.owe_idle {
                tokio::select! {
                    // Poll the transport first: `Idle` only when it has nothing ready.
                    biased;
                    ev = self.client.recv() => ev,
                    () = std::future::ready(()) => {
                        self.owe_idle = false;
                        return Ok(StreamEvent::Idle);
                    }
                }
            } else {
                tokio::select! {
                    // Acks first, so a consumer's acknowledgement reaches the transport
                    // even while the server is silent.
                    biased;
                    changed = self.ack_changed.changed() => {
                        // The sender lives in `self.acker`, so this cannot fail.
                        let _ = changed;
                        continue;
                    }
                    ev = self.client.recv() => ev,
                }
            };
            let target = self.cfg.dsn.target();
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    let err = StreamError::Io {
                        target,
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server ended the replication stream",
                        ),
                    };
                    self.reconnect(err).await?;
                    continue;
                }
                Err(e) => {
                    self.reconnect(StreamError::from_wire(e, &target)).await?;
                    continue;
                }
            };
            let wire = match ev {
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if !self.assembler.between_transactions() {
                        continue;
                    }
                    let wal_end = Lsn::from(wal_end);
                    self.idle_wal_end = self.idle_wal_end.max(wal_end);
                    self.forward_ack();
                    return Ok(StreamEvent::Keepalive { wal_end });
                }
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => WireEvent::Begin {
                    final_lsn: final_lsn.into(),
                    xid,
                    commit_time: commit_time_micros,
                },
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => WireEvent::Data {
                    wal_start: wal_start.into(),
                    data,
                },
                ReplicationEvent::Commit { lsn, end_lsn, .. } => WireEvent::Commit {
                    commit_lsn: lsn.into(),
                    end_lsn: end_lsn.into(),
                },
                ReplicationEvent::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                } => WireEvent::Message {
                    transactional,
                    lsn: lsn.into(),
                    prefix,
                    content,
                },
                ReplicationEvent::StoppedAt { .. } => continue,
            };
            match self.assembler.push(wire)? {
                Some(Assembled::Chunk(chunk)) => {
                    self.owe_idle = true;
                    return Ok(StreamEvent::Chunk(chunk));
                }
                Some(Assembled::Message(msg)) => {
                    self.owe_idle = true;
                    return Ok(StreamEvent::Message(msg));
                }
                None => {}
            }
        }
    }

    /// Pass a newer acknowledged position to the transport; when the consumer has
    /// everything handed on durable and no transaction is open, that includes the idle
    /// server's position (see the module docs).
    fn forward_ack(&mut self) {
        if !self.cfg.acknowledge {
            return;
        }
        if self.idle_wal_end > self.acker.acked()
            && self.assembler.between_transactions()
            && self.acker.acked() >= self.assembler.delivered_end()
        {
            self.acker.ack(self.idle_wal_end);
        }
        let acked = self.acker.acked();
        if acked > self.sent_ack {
            self.client.update_applied_lsn(acked.into());
            self.sent_ack = acked;
        }
    }

    async fn reconnect(&mut self, cause: StreamError) -> Result<(), StreamError> {
        if !cause.is_transient() {
            return Err(cause);
        }
        let resume = if self.cfg.acknowledge {
            self.acker.acked()
        } else {
            self.info.start_lsn
        };
        if self.cfg.create_slot.is_some_and(|c| c.temporary) {
            return Err(StreamError::TemporarySlotLost {
                slot: self.cfg.slot.clone(),
                resume_from: resume,
                cause: cause.to_string(),
            });
        }
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut last = cause;
        loop {
            let delay = self.cfg.reconnect.delay(attempt);
            tracing::warn!(error = %last, attempt, delay_ms = delay.as_millis() as u64, resume_lsn = %resume, "replication session lost, reconnecting");
            if let Some(limit) = self.cfg.reconnect.give_up_after
                && started.elapsed() + delay > limit
            {
                return Err(last);
            }
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
            match start_session(&self.cfg, resume, Session::Resume).await {
                Ok((client, _)) => {
                    tracing::info!(resume_lsn = %resume, attempt, "replication session resumed");
                    self.client = client;
                    self.sent_ack = resume;
                    self.assembler.new_session();
                    return Ok(());
                }
                Err(e) if e.is_transient() => last = e,
                Err(e) => return Err(e),
            }
        }
    }

    /// Stop cleanly: make sure Postgres has the last acknowledged position, then end the
    /// session. Waits at most `deadline`.
    pub async fn shutdown(mut self, deadline: Duration) -> Result<Lsn, StreamError> {
        self.forward_ack();
        let acked = self.acker.acked();
        let until = Instant::now() + deadline;
        let confirmed = !self.cfg.acknowledge
            || acked == Lsn::ZERO
            || loop {
                if Lsn::from(self.client.metrics().last_applied_lsn()) >= acked {
                    break true;
                }
                if Instant::now() >= until || !self.client.is_running() {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
        self.client.stop();
        while let Ok(Some(_)) = self.client.recv().await {}
        if !confirmed {
            advance_slot(&self.cfg, acked, until).await?;
        }
        Ok(acked)
    }
}

/// Which session of a stream is being started.
enum Session<'a> {
    /// The first: may create the slot and publication, and run a backfill.
    First(Option<Backfill<'a>>),
    /// A reconnect: everything must exist already.
    Resume,
}

/// Open a gated replication session, run the checks, create what is asked, start.
async fn start_session(
    cfg: &StreamConfig,
    start_lsn: Lsn,
    session: Session<'_>,
) -> Result<(ReplicationClient, SessionInfo), StreamError> {
    let (first, backfill) = match session {
        Session::First(backfill) => (true, backfill),
        Session::Resume => (false, None),
    };
    let target = cfg.dsn.target();
    let wire = |e| StreamError::from_wire(e, &target);
    let mut rcfg = ReplicationConfig::new(
        cfg.dsn.host(),
        cfg.dsn.user(),
        cfg.dsn.password().unwrap_or(""),
        cfg.dsn.dbname(),
        cfg.slot.as_str(),
        // The publication_names option is an identifier list: quote to keep case.
        quote_ident(&cfg.publication),
    )
    .with_port(cfg.dsn.port())
    .with_start_lsn(start_lsn.into())
    // Report nothing as applied until the consumer says so (see module docs).
    .with_ack_lsn(Lsn::ZERO.into())
    .with_status_interval(cfg.status_interval)
    .with_buffer_size(TRANSPORT_BUFFER_EVENTS)
    .with_options(SESSION_OPTIONS)
    .with_application_name(cfg.application_name.clone());
    rcfg = rcfg.with_tls(replication_tls(&cfg.dsn));
    let mut client = ReplicationClient::connect_gated(rcfg)
        .await
        .map_err(|e| connect_error(e, &target))?;
    let first_row = |rows: Vec<pgwire_replication::QueryRow>| -> Vec<Option<String>> {
        rows.into_iter()
            .next()
            .map(|r| {
                r.into_iter()
                    .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };

    let wal_level = first_row(
        client
            .simple_query("SHOW wal_level")
            .await
            .map_err(|e| connect_error(e, &target))?,
    )
    .into_iter()
    .next()
    .flatten()
    .unwrap_or_default();
    if wal_level != "logical" {
        return Err(StreamError::WalLevel {
            target,
            actual: wal_level,
        });
    }

    let mut publication_created = false;
    let publication_exists = !client
        .simple_query(&format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(&cfg.publication)
        ))
        .await
        .map_err(wire)?
        .is_empty();
    if !publication_exists {
        match (&cfg.create_publication_for, first) {
            (Some(tables), true) if !tables.is_empty() => {
                let list = tables
                    .iter()
                    .map(|t| qualified_table(t))
                    .collect::<Result<Vec<_>, _>>()?
                    .join(", ");
                client
                    .simple_query(&format!(
                        // A partitioned table's changes under its own name, not its partitions'.
                        "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
                        quote_ident(&cfg.publication)
                    ))
                    .await
                    .map_err(wire)?;
                publication_created = true;
            }
            _ => {
                return Err(StreamError::PublicationMissing {
                    publication: cfg.publication.clone(),
                    database: cfg.dsn.dbname().to_owned(),
                });
            }
        }
    }

    let slot_row = first_row(
        client
            .simple_query(&format!(
                "SELECT plugin, slot_type, database, wal_status, confirmed_flush_lsn::text, temporary::text \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                quote_literal(&cfg.slot)
            ))
            .await
            .map_err(wire)?,
    );
    let mut slot_created = false;
    let mut snapshot = None;
    let confirmed_flush;
    if let [
        plugin,
        slot_type,
        database,
        wal_status,
        confirmed,
        _temporary,
    ] = slot_row.as_slice()
    {
        let unusable = |reason: String| StreamError::SlotUnusable {
            slot: cfg.slot.clone(),
            reason,
        };
        if slot_type.as_deref() != Some("logical") {
            return Err(unusable(
                "it is a physical slot; pgprism needs a logical slot".into(),
            ));
        }
        if plugin.as_deref() != Some("pgoutput") {
            return Err(unusable(format!(
                "it uses the output plugin {:?}; pgprism needs pgoutput (drop and recreate the slot)",
                plugin.as_deref().unwrap_or("")
            )));
        }
        if database.as_deref() != Some(cfg.dsn.dbname()) {
            return Err(unusable(format!(
                "it belongs to database {:?}, not {:?}",
                database.as_deref().unwrap_or(""),
                cfg.dsn.dbname()
            )));
        }
        if wal_status.as_deref() == Some("lost") {
            return Err(unusable(
                "Postgres removed WAL it still needed (max_slot_wal_keep_size); \
                 drop and recreate the slot, then rebuild the read models"
                    .into(),
            ));
        }
        confirmed_flush = confirmed
            .as_deref()
            .and_then(|s| s.parse::<Lsn>().ok())
            .unwrap_or(Lsn::ZERO);
    } else {
        match (cfg.create_slot, first) {
            (Some(creation), true) => {
                let sql = format!(
                    "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput {}",
                    cfg.slot,
                    if creation.temporary { " TEMPORARY" } else { "" },
                    if backfill.is_some() {
                        "EXPORT_SNAPSHOT"
                    } else {
                        "NOEXPORT_SNAPSHOT"
                    }
                );
                let row = first_row(client.simple_query(&sql).await.map_err(wire)?);
                confirmed_flush = row
                    .get(1)
                    .cloned()
                    .flatten()
                    .and_then(|s| s.parse::<Lsn>().ok())
                    .unwrap_or(Lsn::ZERO);
                snapshot = row.get(2).cloned().flatten();
                slot_created = true;
                if let Some(backfill) = backfill {
                    // The snapshot lives until this session's next command: back-fill now,
                    // with the session idle, and start streaming only afterwards.
                    let name = snapshot.clone().ok_or_else(|| {
                        StreamError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
                    })?;
                    backfill(name).await.map_err(StreamError::Backfill)?;
                }
            }
            _ => {
                return Err(StreamError::SlotMissing {
                    target,
                    slot: cfg.slot.clone(),
                });
            }
        }
    }

    client.start().await.map_err(wire)?;
    client.wait_started().await.map_err(wire)?;
    Ok((
        client,
        SessionInfo {
            slot_created,
            publication_created,
            confirmed_flush,
            snapshot,
            start_lsn: start_lsn.max(confirmed_flush),
        },
    ))
}

/// An IO failure before the session is established means the server is unreachable:
/// say which server.
fn connect_error(e: pgwire_replication::PgWireError, target: &str) -> StreamError {
    match e {
        pgwire_replication::PgWireError::Io(io) => StreamError::Connect {
            target: target.to_owned(),
            source: std::io::Error::new(io.kind(), io.to_string()),
        },
        other => StreamError::from_wire(other, target),
    }
}

/// `schema.table` (or `table`, meaning `public.table`; names may be double-quoted) as a
/// quoted name, by the one table-name parser the configuration is validated with.
fn qualified_table(name: &str) -> Result<String, StreamError> {
    pgprism_pg::quote_table_name(name).ok_or_else(|| {
        StreamError::Config(format!(
            "invalid table name {name:?}: use schema.table, double-quoting a name that holds a dot or a quote"
        ))
    })
}

/// The replication session's TLS: the same `sslmode`, root and client certificates as the
/// DSN's SQL sessions (`pgprism_pg::TlsOptions`). Two differences of the transport:
/// with `sslrootcert=system` it trusts Mozilla's roots (webpki-roots) rather than the
/// system's, and `verify-full` refuses an IP address as the host.
fn replication_tls(dsn: &Dsn) -> pgwire_replication::TlsConfig {
    use pgwire_replication::SslMode as Wire;
    let tls = dsn.tls();
    let mode = match tls.mode() {
        SslMode::Disable => Wire::Disable,
        SslMode::VerifyFull => Wire::VerifyFull,
        // The transport's verifying modes refuse a server without TLS: `prefer` stays.
        SslMode::Prefer => Wire::Prefer,
        _ if tls.verifies_chain() => Wire::VerifyCa,
        SslMode::Require | SslMode::VerifyCa => Wire::Require,
    };
    pgprism_pg::install_crypto_provider();
    pgwire_replication::TlsConfig {
        mode,
        ca_pem_path: tls.root_cert().map(Into::into),
        sni_hostname: None,
        client_cert_pem_path: tls.client_cert().map(|(c, _)| c.into()),
        client_key_pem_path: tls.client_cert().map(|(_, k)| k.into()),
    }
}

/// The fallback of a clean stop: move the slot to `lsn` over a plain SQL session, waiting
/// for the walsender to release the slot.
async fn advance_slot(cfg: &StreamConfig, lsn: Lsn, until: Instant) -> Result<(), StreamError> {
    let target = cfg.dsn.target();
    let sql_err = |e: tokio_postgres::Error| StreamError::Server {
        sqlstate: e.code().map(|c| c.code().to_owned()),
        message: error_text(&e),
    };
    let (client, conn) = pgprism_pg::connect(&cfg.dsn.named(&cfg.application_name))
        .await
        .map_err(|e| StreamError::Connect {
            target: target.clone(),
            source: std::io::Error::other(error_text(&e)),
        })?;
    let result = loop {
        let r = client
            .execute(
                "SELECT pg_catalog.pg_replication_slot_advance($1, $2::text::pg_lsn) \
                 FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
                &[&cfg.slot, &lsn.to_string()],
            )
            .await;
        match r {
            Ok(_) => break Ok(()),
            Err(e) if e.code().is_some_and(|c| c.code() == "55006") && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => break Err(sql_err(e)),
        }
    };
    drop(client);
    let _ = conn.await;
    result
}
