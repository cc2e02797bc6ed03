//! What the user configures: sinks, projections and their targets, batching.
//!
//! Plain serde types (the binary reads them from TOML), defaults as named constants, and a
//! [`validate`] that names the key path of the first problem and what is allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use pgprism_pg::Dsn;
use serde::{Deserialize, Serialize};

/// Default upper bound on changes in one batch.
pub const DEFAULT_MAX_ROWS: usize = 20_000;
/// Default lower bound the adaptive batch size never goes under.
pub const DEFAULT_MIN_ROWS: usize = 100;
/// Default batch size to start with.
pub const DEFAULT_START_ROWS: usize = 2_000;
/// Default longest time a batch waits to fill while the projection catches up.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(200);
/// Default lag the adaptive batch size aims under.
pub const DEFAULT_TARGET_LAG: Duration = Duration::from_secs(1);
/// Default flush time above which the batch size shrinks.
pub const DEFAULT_SLOW_FLUSH: Duration = Duration::from_secs(2);
/// Default longest wait for a lock in a sink transaction (then retry with a smaller batch).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest a sink statement or projection query may run.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default lifetime of a Redis delete tombstone (must exceed the replay window).
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most keys written by one Redis script call.
pub const DEFAULT_REDIS_KEYS_PER_CALL: usize = 500;

/// What kind of store a sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A Postgres database (`dsn`).
    Postgres,
    /// A Redis server (`url`).
    Redis,
}

/// A place read models are written to. (Flat rather than an enum so that a parse error
/// inside it names its key path.)
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// `postgres` or `redis`.
    pub kind: SinkKind,
    /// Postgres: connection string (`postgres://…` or `key=value`), parsed as it is read.
    #[serde(default)]
    pub dsn: Option<Dsn>,
    /// Redis: `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS.
    #[serde(default)]
    pub url: Option<String>,
    /// Redis over TLS (`rediss://`): the CA certificate (PEM) the server's certificate
    /// must chain to; without it, the operating system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl SinkSpec {
    /// A Postgres sink.
    pub fn postgres(dsn: Dsn) -> SinkSpec {
        SinkSpec {
            kind: SinkKind::Postgres,
            dsn: Some(dsn),
            url: None,
            ca_file: None,
        }
    }

    /// A Redis sink.
    pub fn redis(url: impl Into<String>) -> SinkSpec {
        SinkSpec {
            kind: SinkKind::Redis,
            dsn: None,
            url: Some(url.into()),
            ca_file: None,
        }
    }
}

/// A sink as the writers use it: one variant per kind with exactly its fields, resolved
/// from the flat [`SinkSpec`] the config file is parsed into.
#[derive(Clone, Copy)]
pub enum Sink<'a> {
    /// A Postgres database.
    Postgres {
        /// Its connection string.
        dsn: &'a Dsn,
    },
    /// A Redis server.
    Redis {
        /// `redis://…`, `rediss://…` or `unix://…`.
        url: &'a str,
        /// The CA (PEM) of a `rediss://` server's certificate.
        ca_file: Option<&'a std::path::Path>,
    },
}

impl SinkSpec {
    /// The sink by kind, or the key path of the field it lacks or must not have (what
    /// [`validate`] reports; after it succeeds this never fails).
    pub fn resolve(&self, name: &str) -> Result<Sink<'_>, SpecError> {
        let path = format!("sinks.{name}");
        match self.kind {
            SinkKind::Postgres => {
                if self.url.is_some() {
                    return Err(err(
                        format!("{path}.url"),
                        "a postgres sink takes `dsn`, not `url`",
                    ));
                }
                if self.ca_file.is_some() {
                    return Err(err(
                        format!("{path}.ca_file"),
                        "is for redis sinks; a postgres sink names its CA in the DSN (sslrootcert=…)",
                    ));
                }
                match &self.dsn {
                    Some(dsn) => Ok(Sink::Postgres { dsn }),
                    None => Err(err(format!("{path}.dsn"), "a postgres sink needs `dsn`")),
                }
            }
            SinkKind::Redis => {
                if self.dsn.is_some() {
                    return Err(err(
                        format!("{path}.dsn"),
                        "a redis sink takes `url`, not `dsn`",
                    ));
                }
                let url = match &self.url {
                    Some(url)
                        if url.starts_with("redis://")
                            || url.starts_with("rediss://")
                            || url.starts_with("unix://") =>
                    {
                        url
                    }
                    Some(_) => {
                        return Err(err(
                            format!("{path}.url"),
                            "must start with redis://, rediss:// or unix://",
                        ));
                    }
                    None => return Err(err(format!("{path}.url"), "a redis sink needs `url`")),
                };
                if self.ca_file.is_some() && !url.starts_with("rediss://") {
                    return Err(err(
                        format!("{path}.ca_file"),
                        "is for TLS: use a rediss:// url with it",
                    ));
                }
                Ok(Sink::Redis {
                    url,
                    ca_file: self.ca_file.as_deref(),
                })
            }
        }
    }
}

impl fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SinkKind::Postgres => match &self.dsn {
                Some(dsn) => write!(f, "Postgres({dsn})"),
                None => write!(f, "Postgres(no dsn)"),
            },
            SinkKind::Redis => write!(
                f,
                "Redis({})",
                redact_url(self.url.as_deref().unwrap_or(""))
            ),
        }
    }
}

/// Hide the password in a `redis://user:password@host` URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = rest.get(..authority_end).unwrap_or(rest);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = authority.get(..at).unwrap_or("");
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let tail = rest.get(at + 1..).unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{tail}")
            } else {
                format!("{scheme}://***@{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// What kind of projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionKind {
    /// One source table copied to one target.
    Mirror,
    /// Rows recomputed by a SQL query for the keys a change touches.
    Query,
}

/// One read model as configured: how changes become rows, and where the rows go.
/// [`ProjectionSpec::resolve`] checks which keys its kind takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSpec {
    /// Unique name of the projection.
    pub name: String,
    /// `mirror` or `query`.
    pub kind: ProjectionKind,
    /// Mirror: the source table, `schema.table`.
    #[serde(default)]
    pub source: Option<String>,
    /// Mirror: the source columns to copy (default: all).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Mirror: source column → target column renames.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Mirror: the source columns identifying a row (default: the primary key).
    /// Query: the output columns identifying a read-model row (required).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Query: the SQL, one array parameter per key column (`… WHERE o.id = ANY($1)`).
    #[serde(default)]
    pub query: Option<String>,
    /// Query: for each source table, how a change to it maps to read-model keys.
    #[serde(default)]
    pub keys: BTreeMap<String, KeySource>,
    /// Where the rows go.
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
}

/// A projection checked for its kind.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A mirror.
    Mirror(MirrorSpec),
    /// A query projection.
    Query(QuerySpec),
}

impl Resolved {
    /// The projection's name.
    pub fn name(&self) -> &str {
        match self {
            Resolved::Mirror(m) => &m.name,
            Resolved::Query(q) => &q.name,
        }
    }

    /// Where the projection writes.
    pub fn targets(&self) -> &[TargetSpec] {
        match self {
            Resolved::Mirror(m) => &m.targets,
            Resolved::Query(q) => &q.targets,
        }
    }
}

impl ProjectionSpec {
    /// Check the keys this kind takes (`path` is the projection's key path) and return
    /// the kind-specific view.
    pub fn resolve(&self, path: &str) -> Result<Resolved, SpecError> {
        let refuse = |key: &str, set: bool| {
            if set {
                Err(err(
                    format!("{path}.{key}"),
                    format!("a {:?} projection does not take `{key}`", self.kind).to_lowercase(),
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            ProjectionKind::Mirror => {
                refuse("query", self.query.is_some())?;
                refuse("keys", !self.keys.is_empty())?;
                let Some(source) = &self.source else {
                    return Err(err(
                        format!("{path}.source"),
                        "a mirror needs `source`, the table to copy (like \"public.orders\")",
                    ));
                };
                Ok(Resolved::Mirror(MirrorSpec {
                    name: self.name.clone(),
                    source: source.clone(),
                    columns: self.columns.clone(),
                    rename: self.rename.clone(),
                    key: self.key.clone(),
                    targets: self.targets.clone(),
                }))
            }
            ProjectionKind::Query => {
                refuse("source", self.source.is_some())?;
                refuse("columns", self.columns.is_some())?;
                refuse("rename", !self.rename.is_empty())?;
                let Some(key) = &self.key else {
                    return Err(err(
                        format!("{path}.key"),
                        "a query projection needs `key`, its key columns (like [\"id\"])",
                    ));
                };
                let Some(query) = &self.query else {
                    return Err(err(
                        format!("{path}.query"),
                        "a query projection needs `query`",
                    ));
                };
                let keys = self
                    .keys
                    .iter()
                    .map(|(table, source)| {
                        let kpath = format!("{path}.keys.\"{table}\"");
                        Ok((table.clone(), source.mapping(key.len(), &kpath)?))
                    })
                    .collect::<Result<_, SpecError>>()?;
                Ok(Resolved::Query(QuerySpec {
                    name: self.name.clone(),
                    key: key.clone(),
                    query: query.clone(),
                    keys,
                    targets: self.targets.clone(),
                }))
            }
        }
    }
}

/// A mirror projection.
#[derive(Debug, Clone)]
pub struct MirrorSpec {
    /// Unique name of the projection.
    pub name: String,
    /// The source table, `schema.table`.
    pub source: String,
    /// The source columns to copy (default: all).
    pub columns: Option<Vec<String>>,
    /// Source column → target column renames.
    pub rename: BTreeMap<String, String>,
    /// The source columns identifying a row (default: the table's primary key).
    pub key: Option<Vec<String>>,
    /// Where the rows go.
    pub targets: Vec<TargetSpec>,
}

/// A query projection.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    /// Unique name of the projection.
    pub name: String,
    /// The output columns identifying a read-model row.
    pub key: Vec<String>,
    /// The query: takes one array parameter per key column (`$1`, `$2`, …) and returns
    /// the rows for those keys (`… WHERE o.id = ANY($1)`).
    pub query: String,
    /// For each source table, how a change to it maps to read-model keys.
    pub keys: BTreeMap<String, KeyMapping>,
    /// Where the rows go.
    pub targets: Vec<TargetSpec>,
}

/// How a change to one source table maps to read-model keys, checked
/// ([`KeySource::mapping`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMapping {
    /// The read-model key is in these source columns, in key order.
    Columns(Vec<String>),
    /// A fan-out query from `$1`, an array of `column` values (`None`: the table's
    /// single-column primary key), to read-model keys.
    FanOut {
        /// The source column passed as `$1`.
        column: Option<String>,
        /// The query.
        query: String,
    },
}

impl KeySource {
    /// The mapping this entry asks for, for a read-model key of `key_len` columns;
    /// `path` names the entry in errors.
    pub fn mapping(&self, key_len: usize, path: &str) -> Result<KeyMapping, SpecError> {
        match (&self.column, &self.columns, &self.query) {
            (Some(_), Some(_), _) => Err(err(path, "give `column` or `columns`, not both")),
            (None, None, None) => Err(err(path, "needs `column` (or `columns`) or `query`")),
            (_, Some(_), Some(_)) => Err(err(
                format!("{path}.columns"),
                "a fan-out query takes one `column` as $1",
            )),
            (column, None, Some(query)) => Ok(KeyMapping::FanOut {
                column: column.clone(),
                query: query.clone(),
            }),
            (None, Some(cols), None) if cols.len() != key_len => Err(err(
                format!("{path}.columns"),
                format!("must name {key_len} columns, one per key column"),
            )),
            (None, Some(cols), None) => Ok(KeyMapping::Columns(cols.clone())),
            (Some(_), None, None) if key_len != 1 => Err(err(
                path,
                format!("the key has {key_len} columns; use `columns = [...]`"),
            )),
            (Some(column), None, None) => Ok(KeyMapping::Columns(vec![column.clone()])),
        }
    }
}

/// How a change to one source table maps to read-model keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    /// Without `query`: the source column holding the read-model key. With `query`: the
    /// source column passed as `$1` (default: the table's single primary-key column).
    #[serde(default)]
    pub column: Option<String>,
    /// For multi-column read-model keys: the source columns holding them, in key order.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// A fan-out query from `$1` (an array of `column` values) to read-model keys.
    #[serde(default)]
    pub query: Option<String>,
}

/// How rows are stored in a Redis target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFormat {
    /// One hash per row: a field per non-null column.
    Hash,
    /// One string per row: a JSON object.
    Json,
    /// Delete the key on any change (for cache-aside readers).
    Invalidate,
}

/// One place a projection writes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The sink (a key of `[sinks]`).
    pub sink: String,
    /// Name of the target's offset (default `projection.sink`).
    #[serde(default)]
    pub name: Option<String>,
    /// Postgres: the target table, `schema.table`.
    #[serde(default)]
    pub table: Option<String>,
    /// Redis: key template, columns in braces (`order:{id}`).
    #[serde(default)]
    pub key: Option<String>,
    /// Redis: `hash` (default), `json` or `invalidate`.
    #[serde(default)]
    pub format: Option<RedisFormat>,
    /// Redis: expire keys after this long.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Redis: add up to this much random time to `ttl`, so keys do not expire together.
    #[serde(default, with = "humantime_serde")]
    pub ttl_jitter: Option<Duration>,
    /// Redis: how long a delete's tombstone guards the key against older replays.
    #[serde(default, with = "humantime_serde")]
    pub tombstone_ttl: Option<Duration>,
}

impl TargetSpec {
    /// The target's name: its offset row and dead letters are kept under it.
    pub fn name_in(&self, projection: &str) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{projection}.{}", self.sink))
    }
}

/// Batch sizing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSpec {
    /// Most changes in one batch.
    pub max_rows: usize,
    /// Fewest changes the adaptive size shrinks to.
    pub min_rows: usize,
    /// The size to start with.
    pub start_rows: usize,
    /// While the projection catches up (lag above `target_lag`), the longest a batch waits
    /// to fill before it is flushed anyway; otherwise batches are flushed as soon as the
    /// flush before them ends.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Lag to aim under: the batch grows while lag is above it and flushes are fast.
    #[serde(with = "humantime_serde")]
    pub target_lag: Duration,
    /// A flush slower than this shrinks the batch.
    #[serde(with = "humantime_serde")]
    pub slow_flush: Duration,
    /// Longest wait for a lock in a sink transaction; then the batch is retried smaller.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Longest a sink statement or projection query may run; then the batch is retried
    /// smaller.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// A target whose flush keeps failing transiently this long is set aside: the other
    /// targets go on, it is probed, and once it answers the stream restarts from its
    /// offset (the others skip what they have).
    #[serde(with = "humantime_serde")]
    pub detach_after: Duration,
    /// Sessions a Postgres mirror target applies batches with while catching up: 2 copies
    /// one batch into a staging table while the batch before it applies; 1 keeps to one
    /// connection per target.
    pub sessions: usize,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            max_rows: DEFAULT_MAX_ROWS,
            min_rows: DEFAULT_MIN_ROWS,
            start_rows: DEFAULT_START_ROWS,
            max_age: DEFAULT_MAX_AGE,
            target_lag: DEFAULT_TARGET_LAG,
            slow_flush: DEFAULT_SLOW_FLUSH,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            detach_after: Duration::from_secs(30),
            sessions: 2,
        }
    }
}

/// Loading the rows that exist before a target joins the pipeline (`[backfill]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillSpec {
    /// Whether a target new to the pipeline (no offset yet) loads the existing rows.
    pub initial: bool,
    /// Rows read from the source per chunk (one chunk per flush of the target).
    pub chunk_size: usize,
    /// Most rows per second a target's backfill reads (0: no limit).
    pub rows_per_second: u64,
}

impl Default for BackfillSpec {
    fn default() -> Self {
        BackfillSpec {
            initial: true,
            chunk_size: 10_000,
            rows_per_second: 0,
        }
    }
}

impl BackfillSpec {
    /// The first problem, with its key path.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(1..=1_000_000).contains(&self.chunk_size) {
            return Err(err(
                "backfill.chunk_size",
                "must be between 1 and 1000000 rows",
            ));
        }
        Ok(())
    }
}

/// A configuration problem: the key path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    /// Where, e.g. `projections[0].targets[1].table`.
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        path: path.into(),
        message: message.into(),
    }
}

/// The one parser of table names: `schema.table` (default schema `public`), names
/// double-quoted where they hold dots or quotes.
pub use pgprism_pg::parse_table_name;

/// The column names in a Redis key template (`order:{id}` → `["id"]`); `{{`/`}}` are
/// literal braces.
pub fn template_columns(template: &str) -> Result<Vec<String>, String> {
    let mut cols = Vec::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed '{{' in {template:?}")),
                    }
                }
                if name.is_empty() {
                    return Err(format!("empty '{{}}' in {template:?}"));
                }
                cols.push(name);
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '}' => return Err(format!("unmatched '}}' in {template:?}; write '}}}}'")),
            _ => {}
        }
    }
    if cols.is_empty() {
        return Err(format!(
            "{template:?} names no column; use one like \"order:{{id}}\""
        ));
    }
    Ok(cols)
}

/// Check sinks, projections and batching together; the first problem, with its key path.
pub fn validate(
    sinks: &BTreeMap<String, SinkSpec>,
    projections: &[ProjectionSpec],
    batch: &BatchSpec,
) -> Result<(), SpecError> {
    for (name, sink) in sinks {
        sink.resolve(name)?;
    }
    if batch.min_rows == 0 || batch.min_rows > batch.max_rows {
        return Err(err(
            "batch.min_rows",
            format!("must be between 1 and batch.max_rows ({})", batch.max_rows),
        ));
    }
    if !(batch.min_rows..=batch.max_rows).contains(&batch.start_rows) {
        return Err(err(
            "batch.start_rows",
            "must lie between batch.min_rows and batch.max_rows",
        ));
    }
    for (key, d) in [
        ("batch.lock_timeout", batch.lock_timeout),
        ("batch.statement_timeout", batch.statement_timeout),
        ("batch.detach_after", batch.detach_after),
    ] {
        if d < Duration::from_millis(1) {
            return Err(err(key, "must be at least 1ms"));
        }
    }
    if batch.max_age.is_zero() {
        return Err(err("batch.max_age", "must be more than 0s"));
    }
    if !(1..=2).contains(&batch.sessions) {
        return Err(err("batch.sessions", "must be 1 or 2"));
    }
    let mut names = BTreeSet::new();
    let mut target_names = BTreeSet::new();
    for (i, p) in projections.iter().enumerate() {
        let path = format!("projections[{i}]");
        let resolved = p.resolve(&path)?;
        let (name, targets, out_columns) = match &resolved {
            Resolved::Mirror(m) => {
                if parse_table_name(&m.source).is_none() {
                    return Err(err(
                        format!("{path}.source"),
                        format!("{:?} is not a table name like public.orders", m.source),
                    ));
                }
                if let Some(cols) = &m.columns
                    && cols.is_empty()
                {
                    return Err(err(
                        format!("{path}.columns"),
                        "must name at least one column (omit it to copy all)",
                    ));
                }
                if let (Some(cols), Some(key)) = (&m.columns, &m.key)
                    && let Some(k) = key.iter().find(|k| !cols.contains(k))
                {
                    return Err(err(
                        format!("{path}.key"),
                        format!("key column {k:?} is not among the copied columns"),
                    ));
                }
                let out = m.columns.as_ref().map(|cols| {
                    cols.iter()
                        .map(|c| m.rename.get(c).unwrap_or(c).clone())
                        .collect::<Vec<_>>()
                });
                (&m.name, &m.targets, out)
            }
            Resolved::Query(q) => {
                if q.key.is_empty() {
                    return Err(err(format!("{path}.key"), "must name the key columns"));
                }
                if q.query.trim().is_empty() {
                    return Err(err(format!("{path}.query"), "must not be empty"));
                }
                if q.keys.is_empty() {
                    return Err(err(
                        format!("{path}.keys"),
                        "must map at least one source table to keys",
                    ));
                }
                // Each mapping was checked by `resolve`.
                for table in q.keys.keys() {
                    if parse_table_name(table).is_none() {
                        return Err(err(
                            format!("{path}.keys.\"{table}\""),
                            "is not a table name like public.orders",
                        ));
                    }
                }
                (&q.name, &q.targets, None)
            }
        };
        if name.trim().is_empty() {
            return Err(err(format!("{path}.name"), "must not be empty"));
        }
        if !names.insert(name.clone()) {
            return Err(err(
                format!("{path}.name"),
                format!("{name:?} is used by another projection"),
            ));
        }
        if targets.is_empty() {
            return Err(err(format!("{path}.targets"), "needs at least one target"));
        }
        for (j, t) in targets.iter().enumerate() {
            let tpath = format!("{path}.targets[{j}]");
            let Some(sink) = sinks.get(&t.sink) else {
                let known: Vec<_> = sinks.keys().map(String::as_str).collect();
                return Err(err(
                    format!("{tpath}.sink"),
                    format!(
                        "no sink named {:?} (defined: {})",
                        t.sink,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            };
            if !target_names.insert(t.name_in(name)) {
                return Err(err(
                    format!("{tpath}.name"),
                    format!(
                        "two targets are called {:?}; give one a `name`",
                        t.name_in(name)
                    ),
                ));
            }
            match sink.kind {
                SinkKind::Postgres => {
                    let Some(table) = &t.table else {
                        return Err(err(
                            format!("{tpath}.table"),
                            "a Postgres target needs `table`",
                        ));
                    };
                    if parse_table_name(table).is_none() {
                        return Err(err(
                            format!("{tpath}.table"),
                            format!("{table:?} is not a table name like public.orders"),
                        ));
                    }
                    for key in ["key", "format", "ttl", "ttl_jitter", "tombstone_ttl"] {
                        let set = match key {
                            "key" => t.key.is_some(),
                            "format" => t.format.is_some(),
                            "ttl" => t.ttl.is_some(),
                            "ttl_jitter" => t.ttl_jitter.is_some(),
                            _ => t.tombstone_ttl.is_some(),
                        };
                        if set {
                            return Err(err(
                                format!("{tpath}.{key}"),
                                "only Redis targets take this",
                            ));
                        }
                    }
                }
                SinkKind::Redis => {
                    if t.table.is_some() {
                        return Err(err(
                            format!("{tpath}.table"),
                            "only Postgres targets take `table`; Redis targets take `key`",
                        ));
                    }
                    let Some(template) = &t.key else {
                        return Err(err(
                            format!("{tpath}.key"),
                            "a Redis target needs a key template like \"order:{id}\"",
                        ));
                    };
                    let cols =
                        template_columns(template).map_err(|m| err(format!("{tpath}.key"), m))?;
                    if let Some(out) = &out_columns
                        && let Some(c) = cols.iter().find(|c| !out.contains(c))
                    {
                        return Err(err(
                            format!("{tpath}.key"),
                            format!("{c:?} is not a column of the projection"),
                        ));
                    }
                    if let Resolved::Query(q) = &resolved
                        && let Some(c) = cols.iter().find(|c| !q.key.contains(c))
                    {
                        return Err(err(
                            format!("{tpath}.key"),
                            format!("{c:?} is not a key column ({})", q.key.join(", ")),
                        ));
                    }
                    if t.ttl_jitter.is_some() && t.ttl.is_none() {
                        return Err(err(format!("{tpath}.ttl_jitter"), "needs `ttl`"));
                    }
                    if t.format == Some(RedisFormat::Invalidate) && t.ttl.is_some() {
                        return Err(err(
                            format!("{tpath}.ttl"),
                            "an `invalidate` target writes no values to expire",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        sinks: BTreeMap<String, SinkSpec>,
        #[serde(default)]
        projections: Vec<ProjectionSpec>,
        #[serde(default)]
        batch: BatchSpec,
    }

    fn check(toml_text: &str) -> Result<(), String> {
        let doc: Doc = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        validate(&doc.sinks, &doc.projections, &doc.batch).map_err(|e| e.to_string())
    }

    const DESIGN_EXAMPLE: &str = r#"
[sinks.pg]
kind = "postgres"
dsn = "postgres://app:secret@localhost:5432/shop"

[sinks.cache]
kind = "redis"
url = "redis://localhost:6379"

[[projections]]
name = "order_read_model"
kind = "query"
key = ["id"]
query = "SELECT o.id FROM orders o WHERE o.id = ANY($1)"
[projections.keys]
"public.orders" = { column = "id" }
"public.order_items" = { column = "order_id" }
"public.customers" = { query = "SELECT id FROM orders WHERE customer_id = ANY($1)" }
[[projections.targets]]
sink = "pg"
table = "public.order_read_model"
[[projections.targets]]
sink = "cache"
key = "order:{id}"
format = "hash"
ttl = "1h"
ttl_jitter = "5m"

[[projections]]
name = "customers"
kind = "mirror"
source = "public.customers"
columns = ["id", "name"]
rename = { name = "customer_name" }
[[projections.targets]]
sink = "pg"
table = "read.customers"
[[projections.targets]]
sink = "cache"
key = "customer:{id}"
format = "json"
"#;

    #[test]
    fn the_design_example_is_valid() {
        check(DESIGN_EXAMPLE).unwrap();
    }

    #[test]
    fn errors_name_the_key_path() {
        let cases = [
            (
                DESIGN_EXAMPLE.replace(
                    "sink = \"cache\"\nkey = \"order",
                    "sink = \"cahce\"\nkey = \"order",
                ),
                "projections[0].targets[1].sink: no sink named \"cahce\" (defined: cache, pg)",
            ),
            (
                DESIGN_EXAMPLE.replace("ttl = \"1h\"", "ttl = \"1 fortnight\""),
                "ttl",
            ),
            (
                DESIGN_EXAMPLE.replace("format = \"hash\"", "format = \"hash\"\ncolour = 1"),
                "unknown field `colour`",
            ),
            (
                DESIGN_EXAMPLE.replace("key = \"customer:{id}\"", "key = \"customer:{name}\""),
                "projections[1].targets[1].key: \"name\" is not a column of the projection",
            ),
            (
                DESIGN_EXAMPLE.replace("table = \"read.customers\"", "table = \"a.b.c\""),
                "projections[1].targets[0].table",
            ),
            (
                DESIGN_EXAMPLE.replace("{ column = \"order_id\" }", "{ }"),
                "projections[0].keys.\"public.order_items\": needs `column`",
            ),
            (
                DESIGN_EXAMPLE.replace("name = \"customers\"", "name = \"order_read_model\""),
                "projections[1].name: \"order_read_model\" is used by another projection",
            ),
            (
                format!("{DESIGN_EXAMPLE}\n[batch]\nmin_rows = 0\n"),
                "batch.min_rows",
            ),
            (
                DESIGN_EXAMPLE.replace("postgres://app:secret@localhost:5432/shop", " "),
                "is empty: set a connection string",
            ),
            (
                DESIGN_EXAMPLE.replace("localhost:5432", "localhost:notaport"),
                "invalid DSN postgres://app:***@",
            ),
            (
                format!("{DESIGN_EXAMPLE}\n[batch]\nsessions = 3\n"),
                "batch.sessions: must be 1 or 2",
            ),
            (
                format!("{DESIGN_EXAMPLE}\n[batch]\ndetach_after = \"0s\"\n"),
                "batch.detach_after: must be at least 1ms",
            ),
        ];
        for (doc, want) in cases {
            let got = check(&doc).unwrap_err();
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
    }

    #[test]
    fn sinks_resolve_by_kind_or_name_the_key() {
        let pg = SinkSpec::postgres(Dsn::parse("postgres://db/shop").unwrap());
        assert!(matches!(
            pg.resolve("pg"),
            Ok(Sink::Postgres { dsn }) if dsn.target() == "db:5432"
        ));
        let mut tls = SinkSpec::redis("rediss://cache:6380");
        tls.ca_file = Some("/etc/ca.pem".into());
        assert!(matches!(
            tls.resolve("cache"),
            Ok(Sink::Redis {
                url: "rediss://cache:6380",
                ca_file: Some(_)
            })
        ));
        let mut plain = SinkSpec::redis("redis://cache:6379");
        plain.ca_file = Some("/etc/ca.pem".into());
        let mut pg_ca = pg.clone();
        pg_ca.ca_file = Some("/etc/ca.pem".into());
        let mut no_url = SinkSpec::redis("x");
        no_url.url = None;
        for (spec, key) in [
            (plain, "sinks.s.ca_file"),
            (pg_ca, "sinks.s.ca_file"),
            (no_url, "sinks.s.url"),
            (SinkSpec::redis("http://cache"), "sinks.s.url"),
        ] {
            let e = spec
                .resolve("s")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(key), "{spec:?}: {e}");
        }
    }

    #[test]
    fn sink_debug_hides_passwords() {
        let pg = SinkSpec::postgres(Dsn::parse("postgres://app:secret@db/shop").unwrap());
        let redis = SinkSpec::redis("redis://u:hunter2@cache:6379/0");
        let shown = format!("{pg:?} {redis:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("cache:6379"), "{shown}");
    }

    #[test]
    fn table_names_and_templates_parse() {
        assert_eq!(
            parse_table_name("orders"),
            Some(("public".into(), "orders".into()))
        );
        assert_eq!(
            parse_table_name("\"My Schema\".\"a.\"\"b\""),
            Some(("My Schema".into(), "a.\"b".into()))
        );
        assert_eq!(parse_table_name("a..b"), None);
        assert_eq!(template_columns("o:{id}:{line}").unwrap(), ["id", "line"]);
        assert_eq!(template_columns("{{x}}:{id}").unwrap(), ["id"]);
        assert!(template_columns("plain").is_err());
        assert!(template_columns("o:{id").is_err());
    }
}
