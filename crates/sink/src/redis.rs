//! The Redis writer: every write guarded by the position of the change it carries.
//!
//! Next to each data key `K` a guard key `pgprism:pos:K` holds the position (commit LSN
//! and index, 32 hex digits, compared as strings) of the last change written to `K`. One
//! fenced Lua script per slice of a batch (Redis runs it atomically) checks, per key, that
//! the guard is older than the change, writes, and moves the guard; a delete leaves the
//! guard behind as a tombstone that expires after `tombstone_ttl`. So a redelivered or
//! replayed change never moves a key back in time, and with the offset written after
//! the batch, at-least-once delivery has an exactly-once effect. The fence in front of
//! the script refuses the whole call if a newer leader owns the sink.
//!
//! Per-key failures (a key of the wrong type) come back from the script (`pcall`) and go
//! to the dead letters; the other keys of the call are written.
//!
//! Limits: the keys of one call must live on one server (no Redis Cluster); a replay that
//! goes back further than `tombstone_ttl` may briefly resurrect a deleted key until the
//! replay reaches the delete again.

use std::time::Duration;

use bytes::Bytes;
use pgprism_decoder::pgoutput::{TupleValue, Value, write_json_str};
use pgprism_leader::{Epoch, Offset, RedisFence};
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script, Value as RedisValue};

use crate::batch::{Batch, Entry, Key, Op, Shape};
use crate::error::SinkError;
use crate::spec::{DEFAULT_REDIS_KEYS_PER_CALL, DEFAULT_TOMBSTONE_TTL, RedisFormat, TargetSpec};

/// The guard key of a data key.
pub fn guard_key(key: &str) -> String {
    format!("pgprism:pos:{key}")
}

const WRITE: &str = r#"
local failed = {}
local written, skipped = 0, 0
local a = 2
for i = 2, #KEYS, 2 do
  local k, g = KEYS[i], KEYS[i + 1]
  local pos, op, ttl, tomb, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], tonumber(ARGV[a + 4])
  local first = a + 5
  a = first + n
  local cur = redis.pcall('GET', g)
  if type(cur) == 'table' and cur.err then
    failed[#failed + 1] = tostring(i / 2); failed[#failed + 1] = cur.err
  elseif cur and cur >= pos then
    skipped = skipped + 1
  else
    local r
    if op == 'D' or op == 'X' then
      r = redis.pcall('DEL', k)
    elseif op == 'J' then
      r = redis.pcall('SET', k, ARGV[first])
    else
      local pairs_n = tonumber(ARGV[first])
      if op == 'H' then r = redis.pcall('DEL', k) end
      if not (type(r) == 'table' and r.err) and pairs_n > 0 then
        r = redis.pcall('HSET', k, unpack(ARGV, first + 1, first + 2 * pairs_n))
      end
      if not (type(r) == 'table' and r.err) and first + 2 * pairs_n < a - 1 then
        r = redis.pcall('HDEL', k, unpack(ARGV, first + 1 + 2 * pairs_n, a - 1))
      end
    end
    if type(r) == 'table' and r.err then
      failed[#failed + 1] = tostring(i / 2); failed[#failed + 1] = r.err
    else
      written = written + 1
      if op == 'D' then
        redis.call('SET', g, pos, 'PX', tomb)
      elseif op ~= 'X' then
        if ttl > 0 then
          redis.call('PEXPIRE', k, ttl)
          redis.call('SET', g, pos, 'PX', ttl)
        else
          redis.call('SET', g, pos)
        end
      end
    end
  end
end
return {'OK', tostring(written), tostring(skipped), failed}
"#;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// Index into the shape's key columns.
    Key(usize),
}

/// A Redis target: key template, format, TTLs, and its fence.
pub struct RedisWriter {
    target: String,
    client: redis::Client,
    conn: MultiplexedConnection,
    fence: RedisFence,
    template: String,
    format: RedisFormat,
    ttl: Option<Duration>,
    jitter: Option<Duration>,
    tombstone: Duration,
    script: Script,
    /// The template resolved against the current shape.
    segments: Option<(Shape, Vec<Segment>)>,
}

impl std::fmt::Debug for RedisWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisWriter")
            .field("target", &self.target)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

/// What one write did.
#[derive(Debug, Default)]
pub struct Written {
    /// Keys written or deleted.
    pub written: u64,
    /// Keys that already held this change or a newer one.
    pub skipped: u64,
    /// Keys the server refused, with its error.
    pub failed: Vec<(Key, String, String)>,
}

/// The client of a Redis sink: `redis://` plain, `rediss://` over TLS with the server's
/// certificate checked against the sink's `ca_file`, or the operating system's roots.
pub(crate) fn open(
    url: &str,
    ca_file: Option<&std::path::Path>,
    target: &str,
) -> Result<redis::Client, SinkError> {
    // rediss:// builds its rustls config from the process default provider.
    pgprism_pg::install_crypto_provider();
    let client = match ca_file {
        None => redis::Client::open(url),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                SinkError::config(target, format!("ca_file {}: {e}", path.display()))
            })?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
    };
    client.map_err(SinkError::redis(target, "parsing the Redis URL"))
}

impl RedisWriter {
    /// Connect, stamp our epoch on the target's offset, and return where to resume.
    pub async fn connect(
        pipeline: &str,
        target: &str,
        client: redis::Client,
        spec: &TargetSpec,
        epoch: Epoch,
        backfill: Option<&str>,
    ) -> Result<(RedisWriter, Offset), SinkError> {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(SinkError::redis(target, "connecting to Redis"))?;
        let (fence, offset) =
            RedisFence::stamp_new(&mut conn, pipeline, target, epoch, backfill).await?;
        let writer = RedisWriter {
            target: target.to_owned(),
            client,
            conn,
            fence,
            template: spec.key.clone().unwrap_or_default(),
            format: spec.format.unwrap_or(RedisFormat::Hash),
            ttl: spec.ttl,
            jitter: spec.ttl_jitter,
            tombstone: spec.tombstone_ttl.unwrap_or(DEFAULT_TOMBSTONE_TTL),
            script: RedisFence::fenced_script(WRITE),
            segments: None,
        };
        Ok((writer, offset))
    }

    fn segments(&mut self, shape: &Shape) -> Result<&[Segment], SinkError> {
        if self.segments.as_ref().is_none_or(|(s, _)| s != shape) {
            let mut segs = Vec::new();
            let mut lit = String::new();
            let mut chars = self.template.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '{' if chars.peek() == Some(&'{') => {
                        chars.next();
                        lit.push('{');
                    }
                    '}' if chars.peek() == Some(&'}') => {
                        chars.next();
                        lit.push('}');
                    }
                    '{' => {
                        let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                        let Some(k) = shape.key_names().position(|n| n == name) else {
                            return Err(SinkError::config(
                                &self.target,
                                format!(
                                    "key template {:?} uses {name:?}, which is not a key column \
                                     ({}); a delete would not know the key",
                                    self.template,
                                    shape.key_names().collect::<Vec<_>>().join(", ")
                                ),
                            ));
                        };
                        if !lit.is_empty() {
                            segs.push(Segment::Literal(std::mem::take(&mut lit)));
                        }
                        segs.push(Segment::Key(k));
                    }
                    c => lit.push(c),
                }
            }
            if !lit.is_empty() {
                segs.push(Segment::Literal(lit));
            }
            self.segments = Some((shape.clone(), segs));
        }
        Ok(self
            .segments
            .as_ref()
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&[]))
    }

    /// The Redis key of `key` under the template.
    fn render(segments: &[Segment], key: &Key) -> String {
        let mut out = String::new();
        for s in segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Key(k) => out.push_str(&String::from_utf8_lossy(&key[*k])),
            }
        }
        out
    }

    /// Write `batch` (minus `skip`ped keys): guarded per key, fenced per call.
    pub async fn write(
        &mut self,
        batch: &Batch,
        entries: &[(&Key, &Entry)],
    ) -> Result<Written, SinkError> {
        let shape = batch.shape.clone();
        let segments = self.segments(&shape)?.to_vec();
        let mut out = Written::default();
        if let Some(pos) = batch.truncate {
            let keys = self.scan(&segments).await?;
            let dels: Vec<(Key, Entry)> = keys
                .into_iter()
                .map(|k| {
                    let e = Entry {
                        op: Op::Delete,
                        pos,
                        origin: crate::batch::Origin {
                            table: "*".into(),
                            op: "truncate",
                        },
                    };
                    (k, e)
                })
                .collect();
            let refs: Vec<(&Key, &Entry)> = dels.iter().map(|(k, e)| (k, e)).collect();
            for slice in refs.chunks(DEFAULT_REDIS_KEYS_PER_CALL) {
                self.call(&shape, &segments, slice, &mut out).await?;
            }
        }
        let partial_json: Vec<String> = if self.format == RedisFormat::Json {
            entries
                .iter()
                .filter(|(_, e)| e.op.is_partial())
                .map(|(k, _)| Self::render(&segments, k))
                .collect()
        } else {
            Vec::new()
        };
        let current: std::collections::HashMap<String, serde_json::Value> =
            if partial_json.is_empty() {
                Default::default()
            } else {
                let docs: Vec<Option<String>> =
                    self.conn
                        .mget(&partial_json)
                        .await
                        .map_err(SinkError::redis(
                            &self.target,
                            "reading JSON documents to merge",
                        ))?;
                partial_json
                    .into_iter()
                    .zip(docs)
                    .filter_map(|(k, d)| Some((k, serde_json::from_str(&d?).ok()?)))
                    .collect()
            };
        for slice in entries.chunks(DEFAULT_REDIS_KEYS_PER_CALL) {
            self.call_with(&shape, &segments, slice, &current, &mut out)
                .await?;
        }
        Ok(out)
    }

    async fn call(
        &mut self,
        shape: &Shape,
        segments: &[Segment],
        slice: &[(&Key, &Entry)],
        out: &mut Written,
    ) -> Result<(), SinkError> {
        self.call_with(shape, segments, slice, &Default::default(), out)
            .await
    }

    async fn call_with(
        &mut self,
        shape: &Shape,
        segments: &[Segment],
        slice: &[(&Key, &Entry)],
        current: &std::collections::HashMap<String, serde_json::Value>,
        out: &mut Written,
    ) -> Result<(), SinkError> {
        let mut keys: Vec<String> = Vec::with_capacity(slice.len() * 2);
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(slice.len() * 8);
        for (key, entry) in slice {
            if entry.op == Op::Recompute {
                continue;
            }
            let k = Self::render(segments, key);
            let g = guard_key(&k);
            let ttl_ms = self.ttl_ms();
            args.push(entry.pos.guard_text().into_bytes());
            let payload: Vec<Vec<u8>> = match (&entry.op, self.format) {
                (_, RedisFormat::Invalidate) => {
                    args.push(b"X".to_vec());
                    Vec::new()
                }
                (Op::Delete | Op::Recompute, _) => {
                    args.push(b"D".to_vec());
                    Vec::new()
                }
                (Op::Upsert(row), RedisFormat::Hash) => {
                    let partial = entry.op.is_partial();
                    args.push(if partial {
                        b"h".to_vec()
                    } else {
                        b"H".to_vec()
                    });
                    let mut pairs = Vec::new();
                    let mut dels = Vec::new();
                    for (col, v) in shape.columns.iter().zip(row) {
                        match v {
                            TupleValue::Text(b) | TupleValue::Binary(b) => {
                                pairs.push(col.name.as_bytes().to_vec());
                                pairs.push(b.to_vec());
                            }
                            TupleValue::Null if partial => dels.push(col.name.as_bytes().to_vec()),
                            TupleValue::Null | TupleValue::UnchangedToast => {}
                        }
                    }
                    let mut p = vec![(pairs.len() / 2).to_string().into_bytes()];
                    p.extend(pairs);
                    p.extend(dels);
                    p
                }
                (Op::Upsert(row), RedisFormat::Json) => {
                    args.push(b"J".to_vec());
                    let doc = match json_doc(shape, row, current.get(&k)) {
                        Ok(doc) => doc,
                        Err(e) => {
                            // Remove the op we started: a value its type rejects is this
                            // row's problem, not the batch's.
                            args.truncate(args.len() - 2);
                            out.failed.push(((*key).clone(), "22P02".into(), e));
                            continue;
                        }
                    };
                    vec![doc]
                }
            };
            args.push(ttl_ms.to_string().into_bytes());
            args.push(self.tombstone.as_millis().to_string().into_bytes());
            args.push(payload.len().to_string().into_bytes());
            args.extend(payload);
            keys.push(k);
            keys.push(g);
        }
        if keys.is_empty() {
            return Ok(());
        }
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let reply = self.invoke_bytes(&key_refs, &args).await?;
        let RedisValue::Array(items) = reply else {
            return Err(SinkError::config(
                &self.target,
                format!("unexpected script reply {reply:?}"),
            ));
        };
        let text = |v: &RedisValue| match v {
            RedisValue::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            RedisValue::SimpleString(s) => s.clone(),
            RedisValue::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        if let [_, written, skipped, RedisValue::Array(failed)] = items.as_slice() {
            out.written += text(written).parse::<u64>().unwrap_or(0);
            out.skipped += text(skipped).parse::<u64>().unwrap_or(0);
            for pair in failed.chunks(2) {
                if let [idx, err] = pair
                    && let Ok(i) = text(idx).parse::<usize>()
                    && let Some((key, _)) = slice.get(i - 1)
                {
                    let err = text(err);
                    let code = err.split_whitespace().next().unwrap_or("ERR").to_owned();
                    out.failed.push(((*key).clone(), code, err));
                }
            }
        }
        Ok(())
    }

    /// Run the fenced write script with binary arguments.
    async fn invoke_bytes(
        &mut self,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> Result<RedisValue, SinkError> {
        let mut inv = self.script.key(self.fence.key());
        inv.arg(self.fence.epoch().0);
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a.as_slice());
        }
        let reply: RedisValue = inv
            .invoke_async(&mut self.conn)
            .await
            .map_err(SinkError::redis(&self.target, "running the write script"))?;
        self.fence.check(&reply)?;
        Ok(reply)
    }

    fn ttl_ms(&self) -> u128 {
        match (self.ttl, self.jitter) {
            (Some(ttl), Some(j)) if !j.is_zero() => {
                let extra = rand::rng().random_range(0..=j.as_millis() as u64);
                ttl.as_millis() + u128::from(extra)
            }
            (Some(ttl), _) => ttl.as_millis().max(1),
            (None, _) => 0,
        }
    }

    /// Every key of this target that exists now, parsed back into key values (for a
    /// truncate of the source).
    pub async fn existing_keys(&mut self, shape: &Shape) -> Result<Vec<Key>, SinkError> {
        let segments = self.segments(shape)?.to_vec();
        self.scan(&segments).await
    }

    async fn scan(&mut self, segments: &[Segment]) -> Result<Vec<Key>, SinkError> {
        let mut glob = String::new();
        for s in segments {
            match s {
                Segment::Literal(l) => {
                    for c in l.chars() {
                        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                            glob.push('\\');
                        }
                        glob.push(c);
                    }
                }
                Segment::Key(_) => glob.push('*'),
            }
        }
        let key_count = segments
            .iter()
            .filter(|s| matches!(s, Segment::Key(_)))
            .count();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&glob)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn)
                .await
                .map_err(SinkError::redis(&self.target, "scanning the target's keys"))?;
            for k in batch {
                if let Some(parsed) = parse_key(segments, key_count, &k) {
                    keys.push(parsed);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(keys)
    }

    /// Whether Redis answers.
    pub async fn ping(&mut self) -> Result<(), SinkError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(SinkError::redis(&self.target, "pinging Redis"))
    }

    /// Open a new connection (after a transient error: the old one may be dead).
    pub async fn reconnect(&mut self) -> Result<(), SinkError> {
        self.conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(SinkError::redis(&self.target, "reconnecting to Redis"))?;
        Ok(())
    }

    /// Move the offset forward after the batch it covers was written.
    pub async fn commit(&mut self, to: Offset) -> Result<(), SinkError> {
        Ok(self.fence.commit_offset(&mut self.conn, to).await?)
    }

    /// [`RedisWriter::commit`] with the backfill state the written keys reach, in the
    /// same script.
    pub async fn commit_backfill(&mut self, to: Offset, state: &str) -> Result<(), SinkError> {
        Ok(self
            .fence
            .commit_offset_backfill(&mut self.conn, to, Some(state))
            .await?)
    }

    /// The backfill state read when the epoch was stamped.
    pub fn backfill(&self) -> Option<&str> {
        self.fence.backfill()
    }

    /// Rewind the offset for a replay.
    pub async fn rewind(&mut self, to: Offset) -> Result<(), SinkError> {
        Ok(self.fence.rewind(&mut self.conn, to).await?)
    }
}

/// Parse a key name back into key values by the template (a value ends where the next
/// literal begins). `None` if the name does not fit.
fn parse_key(segments: &[Segment], key_count: usize, name: &str) -> Option<Key> {
    let mut values = vec![Bytes::new(); key_count];
    let mut rest = name;
    for (i, s) in segments.iter().enumerate() {
        match s {
            Segment::Literal(l) => rest = rest.strip_prefix(l.as_str())?,
            Segment::Key(k) => {
                let end = match segments.get(i + 1) {
                    Some(Segment::Literal(next)) => rest.find(next.as_str())?,
                    _ => rest.len(),
                };
                values[*k] = Bytes::copy_from_slice(rest.get(..end)?.as_bytes());
                rest = rest.get(end..)?;
            }
        }
    }
    (rest.is_empty() && !name.starts_with("pgprism:")).then_some(values)
}

/// The JSON document of a row; unchanged columns come from the current document.
fn json_doc(
    shape: &Shape,
    row: &[TupleValue],
    current: Option<&serde_json::Value>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64 * row.len());
    out.push(b'{');
    let mut first = true;
    for (col, v) in shape.columns.iter().zip(row) {
        let value: Option<Vec<u8>> = match v {
            TupleValue::UnchangedToast => current
                .and_then(|c| c.get(&col.name))
                .map(|j| j.to_string().into_bytes()),
            v => {
                let mut buf = Vec::new();
                match Value::from_tuple(col.type_oid, v)
                    .map_err(|e| format!("{}: {e}", col.name))?
                {
                    Some(val) => val.write_json(&mut buf),
                    None => buf.extend_from_slice(b"null"),
                }
                Some(buf)
            }
        };
        let Some(value) = value else { continue };
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_str(&mut out, &col.name);
        out.push(b':');
        out.extend(value);
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_parse_back_by_the_template() {
        let segs = vec![
            Segment::Literal("order:".into()),
            Segment::Key(1),
            Segment::Literal(":line:".into()),
            Segment::Key(0),
        ];
        let k = parse_key(&segs, 2, "order:ab:c:line:7").unwrap();
        assert_eq!(k, vec![Bytes::from("7"), Bytes::from("ab:c")]);
        assert!(parse_key(&segs, 2, "user:1").is_none());
    }
}
