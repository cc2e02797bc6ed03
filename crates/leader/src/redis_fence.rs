//! The offsets store and the fence for a Redis sink.
//!
//! Redis has no transactions spanning a round trip, so the fence lives in Lua scripts,
//! which Redis runs atomically: every script that writes sink data first checks that the
//! sink's epoch is not newer than the writer's ([`RedisFence::fenced_script`]), and the
//! offset moves only forward, only for the owning epoch ([`RedisFence::commit_offset`]).
//!
//! One hash per (pipeline, sink) holds `epoch`, `resume_lsn` and `changes_done`. LSNs are
//! stored as 16 hexadecimal digits so that Lua compares them exactly as strings (Lua
//! numbers are doubles and would round LSNs above 2^53).

use pgprism_decoder::Lsn;
use redis::aio::ConnectionLike;
use redis::{Script, Value};

use crate::error::position;
use crate::{Epoch, LeaderError, Offset};

/// Lua: fail with `{'FENCED', epoch}` when the offset hash at `KEYS[1]` belongs to an epoch
/// newer than `ARGV[1]`. Prepended to every fenced script.
const FENCE_CHECK: &str = r#"
local pgprism_current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if pgprism_current > tonumber(ARGV[1]) then
  return {'FENCED', tostring(pgprism_current)}
end
"#;

const STAMP: &str = r#"
redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'resume_lsn') == 0 then
  redis.call('HSET', KEYS[1], 'resume_lsn', '0000000000000000', 'changes_done', '0')
  if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'backfill', ARGV[2]) end
end
return {'OK', redis.call('HGET', KEYS[1], 'resume_lsn'), redis.call('HGET', KEYS[1], 'changes_done'),
        redis.call('HGET', KEYS[1], 'backfill') or ''}
"#;

const SET_OFFSET: &str = r#"
local lsn = redis.call('HGET', KEYS[1], 'resume_lsn') or '0000000000000000'
local n = tonumber(redis.call('HGET', KEYS[1], 'changes_done') or '0')
if ARGV[4] == 'forward' and (ARGV[2] < lsn or (ARGV[2] == lsn and tonumber(ARGV[3]) < n)) then
  return {'BACKWARDS', lsn, tostring(n)}
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'resume_lsn', ARGV[2], 'changes_done', ARGV[3])
if ARGV[5] == 'set' then redis.call('HSET', KEYS[1], 'backfill', ARGV[6]) end
if ARGV[5] == 'clear' then redis.call('HDEL', KEYS[1], 'backfill') end
return {'OK'}
"#;

/// One leader's handle on one Redis sink's offset hash.
#[derive(Debug, Clone)]
pub struct RedisFence {
    pipeline: String,
    sink: String,
    key: String,
    epoch: Epoch,
    backfill: Option<String>,
}

/// The offset hash of (pipeline, sink). Lengths keep any two name pairs apart
/// (`a:b`+`c` and `a`+`b:c` differ).
pub fn offset_key(pipeline: &str, sink: &str) -> String {
    format!("pgprism:offset:{}:{pipeline}:{sink}", pipeline.len())
}

fn lsn_hex(lsn: Lsn) -> String {
    format!("{:016X}", lsn.0)
}

fn parse_hex(sink: &str, s: &str) -> Result<Lsn, LeaderError> {
    u64::from_str_radix(s, 16)
        .map(Lsn)
        .map_err(|_| LeaderError::Corrupt {
            sink: sink.to_owned(),
            detail: format!("resume_lsn {s:?} is not 16 hex digits"),
        })
}

fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                Value::SimpleString(s) => s,
                Value::Int(n) => n.to_string(),
                other => format!("{other:?}"),
            })
            .collect(),
        other => vec![format!("{other:?}")],
    }
}

fn redis_err(context: &'static str) -> impl FnOnce(redis::RedisError) -> LeaderError {
    move |e| LeaderError::Redis {
        context,
        message: e.to_string(),
    }
}

impl RedisFence {
    /// Take over a Redis sink for `epoch`: stamp the epoch on its offset hash (creating it
    /// at `0/0`) and return the offset to resume from; [`LeaderError::Fenced`] if a newer
    /// epoch owns it.
    pub async fn stamp(
        conn: &mut impl ConnectionLike,
        pipeline: &str,
        sink: &str,
        epoch: Epoch,
    ) -> Result<(RedisFence, Offset), LeaderError> {
        Self::stamp_new(conn, pipeline, sink, epoch, None).await
    }

    /// [`RedisFence::stamp`]; an offset hash created now starts with `backfill` as its
    /// backfill state (read back as [`RedisFence::backfill`]).
    pub async fn stamp_new(
        conn: &mut impl ConnectionLike,
        pipeline: &str,
        sink: &str,
        epoch: Epoch,
        backfill: Option<&str>,
    ) -> Result<(RedisFence, Offset), LeaderError> {
        let mut fence = RedisFence {
            pipeline: pipeline.to_owned(),
            sink: sink.to_owned(),
            key: offset_key(pipeline, sink),
            epoch,
            backfill: None,
        };
        let reply = fence
            .run(conn, STAMP, &[backfill.unwrap_or_default()])
            .await?;
        let [_, lsn, n, backfill] = reply.as_slice() else {
            return Err(fence.corrupt(format!("unexpected stamp reply {reply:?}")));
        };
        fence.backfill = (!backfill.is_empty()).then(|| backfill.clone());
        let offset = Offset {
            resume_lsn: parse_hex(sink, lsn)?,
            changes_done: n
                .parse()
                .map_err(|_| fence.corrupt(format!("changes_done {n:?}")))?,
        };
        Ok((fence, offset))
    }

    /// The epoch this fence writes with.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The backfill state read at the stamp (`None`: no backfill).
    pub fn backfill(&self) -> Option<&str> {
        self.backfill.as_deref()
    }

    /// Move the offset forward to `to` and record the backfill state (`None`: clear it)
    /// in the same script.
    pub async fn commit_offset_backfill(
        &self,
        conn: &mut impl ConnectionLike,
        to: Offset,
        backfill: Option<&str>,
    ) -> Result<(), LeaderError> {
        let (lsn, n) = (lsn_hex(to.resume_lsn), to.changes_done.to_string());
        let (op, state) = match backfill {
            Some(s) => ("set", s),
            None => ("clear", ""),
        };
        let reply = self
            .run(conn, SET_OFFSET, &[&lsn, &n, "forward", op, state])
            .await?;
        self.backwards(reply, to)
    }

    /// The offset hash's key: `KEYS[1]` of every fenced script.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Move the offset forward to `to` (after the batch it covers was written).
    pub async fn commit_offset(
        &self,
        conn: &mut impl ConnectionLike,
        to: Offset,
    ) -> Result<(), LeaderError> {
        // The batch's guarded writes are done, the offset has not moved: the next leader
        // delivers the batch again and the guards keep every key where it is.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("redis-before-offset-commit", |_| pgprism_pg::crash_at(
            "redis-before-offset-commit"
        ));
        self.set(conn, to, "forward").await
    }

    /// Rewind the offset to `to` for a replay, under the fence.
    pub async fn rewind(
        &self,
        conn: &mut impl ConnectionLike,
        to: Offset,
    ) -> Result<(), LeaderError> {
        self.set(conn, to, "any").await
    }

    async fn set(
        &self,
        conn: &mut impl ConnectionLike,
        to: Offset,
        direction: &str,
    ) -> Result<(), LeaderError> {
        let (lsn, n) = (lsn_hex(to.resume_lsn), to.changes_done.to_string());
        let reply = self
            .run(conn, SET_OFFSET, &[&lsn, &n, direction, "keep", ""])
            .await?;
        self.backwards(reply, to)
    }

    /// The error for a `BACKWARDS` reply of [`SET_OFFSET`].
    fn backwards(&self, reply: Vec<String>, to: Offset) -> Result<(), LeaderError> {
        if let [status, lsn, n] = reply.as_slice()
            && status == "BACKWARDS"
        {
            return Err(LeaderError::Backwards {
                sink: self.sink.clone(),
                from: position(parse_hex(&self.sink, lsn)?, n.parse().unwrap_or(0)),
                to: position(to.resume_lsn, to.changes_done as i64),
            });
        }
        Ok(())
    }

    /// Wrap a sink's Lua `body` so it runs only while our epoch owns the sink. The script
    /// gets the offset key as `KEYS[1]` and our epoch as `ARGV[1]`; the body's own keys
    /// and arguments follow (pass them to [`RedisFence::invoke`]).
    pub fn fenced_script(body: &str) -> Script {
        Script::new(&format!("{FENCE_CHECK}\n{body}"))
    }

    /// Run a script made by [`RedisFence::fenced_script`]: `Err(Fenced)` if a newer epoch
    /// owns the sink (nothing was written), else the body's reply.
    pub async fn invoke(
        &self,
        conn: &mut impl ConnectionLike,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, LeaderError> {
        let mut inv = script.key(&self.key);
        inv.arg(self.epoch.0);
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let reply: Value = inv
            .invoke_async(conn)
            .await
            .map_err(redis_err("running a fenced Redis script"))?;
        self.check(&reply)?;
        Ok(reply)
    }

    /// The reply of a script made by [`RedisFence::fenced_script`] and invoked by other
    /// means (binary arguments, say): `Err(Fenced)` if the fence refused it.
    pub fn check(&self, reply: &Value) -> Result<(), LeaderError> {
        if let Value::Array(items) = reply
            && let [Value::BulkString(tag), current] = items.as_slice()
            && tag.as_slice() == b"FENCED"
        {
            let current = match current {
                Value::BulkString(b) => String::from_utf8_lossy(b).parse().unwrap_or(i64::MAX),
                _ => i64::MAX,
            };
            return Err(self.fenced(Epoch(current)));
        }
        Ok(())
    }

    /// The sink's backfill state (no fence: for status).
    pub async fn read_backfill(
        conn: &mut impl ConnectionLike,
        pipeline: &str,
        sink: &str,
    ) -> Result<Option<String>, LeaderError> {
        redis::cmd("HGET")
            .arg(offset_key(pipeline, sink))
            .arg("backfill")
            .query_async(conn)
            .await
            .map_err(redis_err("reading the Redis sink's backfill state"))
    }

    /// The sink's durable offset (no fence: for status and for resuming).
    pub async fn read(
        conn: &mut impl ConnectionLike,
        pipeline: &str,
        sink: &str,
    ) -> Result<Option<Offset>, LeaderError> {
        let (lsn, n): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(offset_key(pipeline, sink))
            .arg("resume_lsn")
            .arg("changes_done")
            .query_async(conn)
            .await
            .map_err(redis_err("reading the Redis sink's offset"))?;
        match (lsn, n) {
            (Some(lsn), Some(n)) => Ok(Some(Offset {
                resume_lsn: parse_hex(sink, &lsn)?,
                changes_done: n,
            })),
            _ => Ok(None),
        }
    }

    /// Run one of our own fenced scripts; its reply as strings.
    async fn run(
        &self,
        conn: &mut impl ConnectionLike,
        body: &str,
        args: &[&str],
    ) -> Result<Vec<String>, LeaderError> {
        Ok(strings(
            self.invoke(conn, &Self::fenced_script(body), &[], args)
                .await?,
        ))
    }

    fn fenced(&self, current: Epoch) -> LeaderError {
        LeaderError::Fenced {
            pipeline: self.pipeline.clone(),
            sink: self.sink.clone(),
            ours: self.epoch,
            current,
        }
    }

    fn corrupt(&self, detail: String) -> LeaderError {
        LeaderError::Corrupt {
            sink: self.sink.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lsns_compare_like_numbers() {
        let a = lsn_hex(Lsn(0xF));
        let b = lsn_hex(Lsn(0x10));
        let c = lsn_hex(Lsn(u64::MAX));
        assert!(a < b && b < c);
        assert_eq!(parse_hex("s", &c).unwrap(), Lsn(u64::MAX));
    }

    #[test]
    fn offset_keys_keep_names_apart() {
        assert_ne!(offset_key("a:b", "c"), offset_key("a", "b:c"));
    }
}
