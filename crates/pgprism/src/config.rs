//! The configuration file: one TOML document, every value overridable by a `PGPRISM_…`
//! environment variable, unknown keys rejected, errors naming the key path.
//!
//! Environment overrides name the key path in upper case with `_` between the parts:
//! `PGPRISM_SOURCE_DSN` sets `source.dsn`, `PGPRISM_LEADER_TAKEOVER_AFTER` sets
//! `leader.takeover_after`, `PGPRISM_SINKS_PG_DSN` sets `sinks.pg.dsn`,
//! `PGPRISM_PROJECTIONS_0_TARGETS_1_TTL` sets `projections[0].targets[1].ttl`. A name is
//! matched against the keys the file and the defaults have, so key names that contain
//! `_` work. The value is read as TOML when it parses (`10`, `true`, `["a"]`), else as a
//! string (`5s`, a DSN).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pgprism_pg::Dsn;
use pgprism_sink::spec::{BackfillSpec, BatchSpec, ProjectionSpec, SinkSpec, SpecError};
use serde::{Deserialize, Serialize};
use toml::Value;

/// Default pipeline name (the leader lock, offsets and dead letters are kept under it).
pub const DEFAULT_PIPELINE: &str = "pgprism";
/// Default slot and publication name.
pub const DEFAULT_SLOT: &str = "pgprism";
/// Default HTTP bind address: metrics and health on localhost only.
pub const DEFAULT_HTTP_BIND: &str = "127.0.0.1:9187";
/// Default time a graceful shutdown may take.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// Default WAL kept behind the durable offsets so that a replay can reach it (64 MiB).
pub const DEFAULT_REPLAY_WINDOW: u64 = 64 << 20;

/// Environment variables with the `PGPRISM_` prefix that are not configuration keys.
const NOT_CONFIG: &[&str] = &["PGPRISM_LOG", "PGPRISM_CONFIG", "PGPRISM_DLQ_DSN"];

/// The whole file, parsed into typed values (DSNs, durations, sizes, addresses) as it is
/// read: a bad value is an error naming its key, and no use parses it again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The pipeline's name: replicas with the same name elect one leader.
    #[serde(default = "default_pipeline")]
    pub pipeline: String,
    /// The database whose WAL is read.
    pub source: Source,
    /// Election and replay.
    #[serde(default)]
    pub leader: Leader,
    /// Where read models are written, by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSpec>,
    /// The read models.
    #[serde(default)]
    pub projections: Vec<ProjectionSpec>,
    /// Batch sizing and sink timeouts.
    #[serde(default)]
    pub batch: BatchSpec,
    /// Loading existing rows into targets new to the pipeline.
    #[serde(default)]
    pub backfill: BackfillSpec,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub http: Http,
    /// Periodic `pg_logical_emit_message`, so an idle database still advances the slot.
    #[serde(default)]
    pub heartbeat: Heartbeat,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: Shutdown,
}

fn default_pipeline() -> String {
    DEFAULT_PIPELINE.to_owned()
}

fn default_slot() -> String {
    DEFAULT_SLOT.to_owned()
}

/// `[source]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Connection string of the source (`postgres://user:password@host:port/db`).
    #[serde(deserialize_with = "source_dsn")]
    pub dsn: Dsn,
    /// The logical replication slot.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// The publication.
    #[serde(default = "default_slot")]
    pub publication: String,
    /// Tables of a publication created when missing (`schema.table`; empty: all tables).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Create the slot and publication if they do not exist.
    #[serde(default = "yes")]
    pub create: bool,
    /// Largest number of changes of one transaction handed to the projections at once: a
    /// bigger transaction is applied in several flushes (its offset moves inside it), so
    /// memory stays bounded.
    #[serde(default = "default_chunk_changes")]
    pub chunk_changes: usize,
}

fn default_chunk_changes() -> usize {
    pgprism_decoder::stream::DEFAULT_CHUNK_CHANGES
}

fn yes() -> bool {
    true
}

/// `source.dsn`, with the way to set it when it is empty.
fn source_dsn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Dsn, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Err(serde::de::Error::custom(
            "must be set (or PGPRISM_SOURCE_DSN), like postgres://user@host:5432/db",
        ));
    }
    Dsn::parse(&text).map_err(serde::de::Error::custom)
}

/// A size like `64MB`, `512kB`, `0` (or a number of bytes).
fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => parse_bytes(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not a size like 0, 512kB, 64MB or 2GB"))
        }),
    }
}

/// `http.bind`: an address, or empty for none.
fn bind_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address like 127.0.0.1:9187 (empty: no HTTP server)"
        ))
    })
}

fn bind_text<S: serde::Serializer>(bind: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&bind.map(|a| a.to_string()).unwrap_or_default())
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("dsn", &self.dsn)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tables", &self.tables)
            .field("create", &self.create)
            .field("chunk_changes", &self.chunk_changes)
            .finish()
    }
}

/// `[leader]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Leader {
    /// This replica's name in `pgprism.pipelines.leader` (default: host name and pid).
    pub replica_id: Option<String>,
    /// A standby's interval between attempts to take the lock.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// The leader's heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A leader whose heartbeat is older than this is replaced.
    #[serde(with = "humantime_serde")]
    pub takeover_after: Duration,
    /// A slot still held by a dead leader's walsender this long is taken over.
    #[serde(with = "humantime_serde")]
    pub slot_takeover_after: Duration,
    /// The advisory lock key (default: derived from the pipeline name).
    pub lock_key: Option<i64>,
    /// Bytes of WAL kept behind the durable offsets so a replay can reach it (written
    /// `64MB`, `1GB`, `0`).
    #[serde(deserialize_with = "byte_size")]
    pub replay_window: u64,
}

impl Default for Leader {
    fn default() -> Self {
        Leader {
            replica_id: None,
            retry_interval: pgprism_leader::election::DEFAULT_RETRY_INTERVAL,
            heartbeat_interval: pgprism_leader::election::DEFAULT_HEARTBEAT_INTERVAL,
            takeover_after: pgprism_leader::election::DEFAULT_TAKEOVER_AFTER,
            slot_takeover_after: Duration::from_secs(10),
            lock_key: None,
            replay_window: DEFAULT_REPLAY_WINDOW,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address of `/metrics`, `/healthz`, `/readyz` (written empty: no HTTP server).
    #[serde(deserialize_with = "bind_address", serialize_with = "bind_text")]
    pub bind: Option<SocketAddr>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            bind: Some(DEFAULT_HTTP_BIND.parse().expect("a socket address")),
        }
    }
}

/// `[heartbeat]`
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Heartbeat {
    /// Emit a logical message this often (`0s` or absent: never).
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// How long stopping may take: flush, commit, final acknowledgement, release.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            deadline: DEFAULT_SHUTDOWN_DEADLINE,
        }
    }
}

/// A configuration problem, naming where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The path.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key is unknown, has the wrong type or a bad value.
    #[error("config: {path}: {message}")]
    Key {
        /// The key path (`leader.takeover_after`).
        path: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl From<SpecError> for ConfigError {
    fn from(e: SpecError) -> Self {
        ConfigError::Key {
            path: e.path,
            message: e.message,
        }
    }
}

fn key_err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        path: path.into(),
        message: message.into(),
    }
}

impl Config {
    /// Read `path`, apply `PGPRISM_…` overrides from `env`, parse and validate.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string(), env)
    }

    /// Parse a document (`origin` names it in errors), apply overrides, validate.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc: Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        apply_env(&mut doc, env)?;
        let config: Config = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            key_err(
                if path == "." {
                    "(top level)".to_owned()
                } else {
                    path
                },
                // toml appends "in `table`" on a second line: the path says it already.
                e.into_inner()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks beyond the types: names, addresses, sinks used by projections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pipeline.trim().is_empty() {
            return Err(key_err("pipeline", "must not be empty"));
        }
        pgprism_decoder::stream::validate_slot_name(&self.source.slot)
            .map_err(|e| key_err("source.slot", e.to_string()))?;
        pgprism_decoder::stream::validate_publication_name(&self.source.publication)
            .map_err(|e| key_err("source.publication", e.to_string()))?;
        for (i, t) in self.source.tables.iter().enumerate() {
            if pgprism_sink::spec::parse_table_name(t).is_none() {
                return Err(key_err(
                    format!("source.tables[{i}]"),
                    format!("{t:?} is not a table name like public.orders"),
                ));
            }
        }
        if self.source.chunk_changes == 0 {
            return Err(key_err("source.chunk_changes", "must be at least 1"));
        }
        for (key, d) in [
            ("leader.retry_interval", self.leader.retry_interval),
            ("leader.heartbeat_interval", self.leader.heartbeat_interval),
            ("leader.takeover_after", self.leader.takeover_after),
            ("shutdown.deadline", self.shutdown.deadline),
        ] {
            if d.is_zero() {
                return Err(key_err(key, "must be more than 0s"));
            }
        }
        if self.leader.takeover_after <= self.leader.heartbeat_interval {
            return Err(key_err(
                "leader.takeover_after",
                "must be longer than leader.heartbeat_interval, or a healthy leader would be replaced",
            ));
        }
        if self.projections.is_empty() {
            return Err(key_err(
                "projections",
                "define at least one [[projections]] (see pgprism.example.toml)",
            ));
        }
        pgprism_sink::spec::validate(&self.sinks, &self.projections, &self.batch)?;
        self.backfill.validate()?;
        Ok(())
    }

    /// The pipeline's leader lock key: `leader.lock_key`, or derived from the pipeline name.
    pub fn lock_key(&self) -> i64 {
        self.leader
            .lock_key
            .unwrap_or_else(|| pgprism_leader::lock_key(&self.pipeline))
    }

    /// The projector's view of this configuration, writing as `epoch`.
    pub fn projector(&self, epoch: pgprism_leader::Epoch) -> pgprism_sink::ProjectorConfig {
        pgprism_sink::ProjectorConfig {
            lock_key: self.lock_key(),
            pipeline: self.pipeline.clone(),
            epoch,
            source: self.source.dsn.clone(),
            sinks: self.sinks.clone(),
            projections: self.projections.clone(),
            batch: self.batch.clone(),
            takeover_after: self.leader.takeover_after,
            backfill: self.backfill.clone(),
        }
    }
}

/// `64MB` → 67108864. Units kB, MB, GB, TB (powers of 1024, as Postgres reads them).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Apply `PGPRISM_…` overrides to the document.
fn apply_env(
    doc: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    // The keys a document can have: the defaults' sections plus what the file has.
    let mut reference =
        Value::try_from(ReferenceDoc::default()).unwrap_or(Value::Table(Default::default()));
    // Optional keys without a default are absent from the serialized defaults.
    if let Some(Value::Table(leader)) = reference.get_mut("leader") {
        leader.insert("replica_id".into(), Value::String(String::new()));
        leader.insert("lock_key".into(), Value::Integer(0));
    }
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("PGPRISM_") && !NOT_CONFIG.contains(&k.as_str()))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let rest = name["PGPRISM_".len()..].to_ascii_lowercase();
        let value = parse_env_value(&raw);
        if !set_path(doc, &reference, &rest, value) {
            return Err(key_err(
                name.clone(),
                "matches no configuration key (PGPRISM_SOURCE_DSN sets source.dsn; see the config reference in README.md)",
            ));
        }
    }
    Ok(())
}

/// The sections and keys known without a file (for matching environment names).
#[derive(Serialize, Default)]
struct ReferenceDoc {
    pipeline: String,
    source: ReferenceSource,
    leader: Leader,
    batch: BatchSpec,
    backfill: BackfillSpec,
    http: Http,
    heartbeat: ReferenceHeartbeat,
    shutdown: Shutdown,
}

#[derive(Serialize, Default)]
struct ReferenceSource {
    dsn: String,
    slot: String,
    publication: String,
    tables: Vec<String>,
    create: bool,
    chunk_changes: usize,
}

#[derive(Serialize, Default)]
struct ReferenceHeartbeat {
    interval: String,
}

fn parse_env_value(raw: &str) -> Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        Err(_) => Value::String(raw.to_owned()),
    }
}

/// Set the key that `rest` (lower case, `_`-joined) names in `doc`, matching key names
/// against `doc` and `reference`; intermediate tables are created as needed.
fn set_path(doc: &mut Value, reference: &Value, rest: &str, value: Value) -> bool {
    match doc {
        Value::Table(table) => {
            let mut keys: Vec<String> = table.keys().cloned().collect();
            if let Value::Table(r) = reference {
                keys.extend(r.keys().cloned());
            }
            keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
            keys.dedup();
            for key in keys {
                let lower = key.to_ascii_lowercase();
                let sub_ref = match reference {
                    Value::Table(r) => r
                        .get(&key)
                        .cloned()
                        .unwrap_or(Value::Table(Default::default())),
                    _ => Value::Table(Default::default()),
                };
                if rest == lower {
                    // A scalar key (or a whole table given as TOML).
                    if let Value::String(s) = &value
                        && matches!(sub_ref, Value::Integer(_) | Value::Boolean(_))
                    {
                        // Keep the string: the type check names the key.
                        table.insert(key, Value::String(s.clone()));
                    } else {
                        table.insert(key, value);
                    }
                    return true;
                }
                if let Some(tail) = rest.strip_prefix(&format!("{lower}_")) {
                    let entry = table.entry(key.clone()).or_insert_with(|| match &sub_ref {
                        Value::Array(_) => Value::Array(Vec::new()),
                        _ => Value::Table(Default::default()),
                    });
                    if matches!(entry, Value::Table(_) | Value::Array(_))
                        && set_path(entry, &sub_ref, tail, value.clone())
                    {
                        return true;
                    }
                }
            }
            false
        }
        Value::Array(items) => {
            let (index, tail) = match rest.split_once('_') {
                Some((i, t)) => (i, Some(t)),
                None => (rest, None),
            };
            let Ok(i) = index.parse::<usize>() else {
                return false;
            };
            let Some(item) = items.get_mut(i) else {
                return false;
            };
            match tail {
                None => {
                    *item = value;
                    true
                }
                Some(t) => set_path(item, &Value::Table(Default::default()), t, value),
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../pgprism.example.toml");

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        Config::parse(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = parse(EXAMPLE, &[]).unwrap();
        assert_eq!(c.projections.len(), 2);
        assert_eq!(c.http.bind, DEFAULT_HTTP_BIND.parse().ok());
    }

    #[test]
    fn environment_overrides_any_key() {
        let c = parse(
            EXAMPLE,
            &[
                ("PGPRISM_SOURCE_DSN", "postgres://u:p@db:5433/x"),
                ("PGPRISM_LEADER_TAKEOVER_AFTER", "7s"),
                ("PGPRISM_LEADER_SLOT_TAKEOVER_AFTER", "3s"),
                ("PGPRISM_BATCH_MAX_ROWS", "500"),
                ("PGPRISM_BATCH_MIN_ROWS", "50"),
                ("PGPRISM_BATCH_START_ROWS", "100"),
                ("PGPRISM_SINKS_CACHE_URL", "redis://other:6380"),
                ("PGPRISM_PROJECTIONS_0_TARGETS_1_TTL", "2h"),
                ("PGPRISM_HTTP_BIND", "0.0.0.0:9000"),
                ("PGPRISM_LEADER_REPLICA_ID", "replica-7"),
                ("PGPRISM_LEADER_LOCK_KEY", "42"),
                ("PGPRISM_HEARTBEAT_INTERVAL", "0s"),
                ("PGPRISM_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(c.source.dsn.target(), "db:5433");
        assert_eq!(c.leader.takeover_after, Duration::from_secs(7));
        assert_eq!(c.leader.slot_takeover_after, Duration::from_secs(3));
        assert_eq!(c.batch.max_rows, 500);
        assert_eq!(c.sinks["cache"].url.as_deref(), Some("redis://other:6380"));
        assert_eq!(
            c.projections[0].targets[1].ttl,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(c.http.bind, "0.0.0.0:9000".parse().ok());
        assert_eq!(c.leader.replica_id.as_deref(), Some("replica-7"));
        assert_eq!(c.leader.lock_key, Some(42));
        assert_eq!(c.heartbeat.interval, Some(Duration::ZERO));
    }

    #[test]
    fn errors_name_the_key_path() {
        type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                EXAMPLE.replace("[leader]", "[leader]\ncolour = 1"),
                vec![],
                "config: leader.colour: unknown field `colour`",
            ),
            (
                EXAMPLE.replace("takeover_after = \"5s\"", "takeover_after = \"5 parsecs\""),
                vec![],
                "config: leader.takeover_after:",
            ),
            (
                EXAMPLE.to_owned(),
                vec![("PGPRISM_BATCH_MAX_AGE", "soon")],
                "config: batch.max_age:",
            ),
            (
                EXAMPLE.replace("sink = \"cache\"", "sink = \"cahce\""),
                vec![],
                "projections[0].targets[1].sink: no sink named \"cahce\"",
            ),
            (
                EXAMPLE.to_owned(),
                vec![("PGPRISM_SOURCE_DNS", "x")],
                "PGPRISM_SOURCE_DNS: matches no configuration key",
            ),
            (
                EXAMPLE.to_owned(),
                vec![("PGPRISM_HTTP_BIND", "localhost")],
                "http.bind:",
            ),
            (
                EXAMPLE.to_owned(),
                vec![("PGPRISM_LEADER_REPLAY_WINDOW", "lots")],
                "leader.replay_window",
            ),
            (
                EXAMPLE.replace("kind = \"query\"", "kind = \"view\""),
                vec![],
                "config: projections[0].kind: unknown variant `view`",
            ),
            (
                "[source]\ndsn = \"\"\n".to_owned(),
                vec![],
                "source.dsn: must be set",
            ),
            (
                "pipeline = \"x\"\n".to_owned(),
                vec![],
                "missing field `source`",
            ),
            ("[source\n".to_owned(), vec![], "config file test.toml:"),
        ];
        for (text, env, want) in cases {
            let got = parse(&text, &env).unwrap_err();
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes("64MB"), Some(64 << 20));
        assert_eq!(parse_bytes("2GB"), Some(2 << 30));
        assert_eq!(parse_bytes("1 kB"), Some(1024));
        assert_eq!(parse_bytes("1 parsec"), None);
    }

    #[test]
    fn debug_hides_passwords() {
        let c = parse(
            &EXAMPLE.replace("postgres://pgprism@", "postgres://pgprism:hunter2@"),
            &[],
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
