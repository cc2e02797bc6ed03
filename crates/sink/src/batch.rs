//! A batch of read-model operations for one target, coalesced per key.
//!
//! Changes of many source transactions are folded into at most one operation per key:
//! the last one wins, except that a column whose value did not come (an unchanged TOASTed
//! column) keeps the value an earlier operation of the batch supplied. Writers apply a
//! batch set-based; the order of keys inside it does not matter because each key appears
//! once (a key-changing update is a delete of the old key plus an upsert of the new).

use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use pgprism_decoder::Lsn;
use pgprism_decoder::pgoutput::TupleValue;
use serde_json::{Map, Value as Json};

/// A position in commit order: the transaction's commit LSN and the change's index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The commit LSN of the change's transaction.
    pub commit_lsn: Lsn,
    /// The change's index inside its transaction.
    pub seq: u64,
}

impl Position {
    /// 32 hex digits that compare as strings like positions do (for Redis guards).
    pub fn guard_text(&self) -> String {
        format!("{:016X}{:016X}", self.commit_lsn.0, self.seq)
    }
}

/// One column of a read-model row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeColumn {
    /// Column name in the target.
    pub name: String,
    /// Postgres type OID of the value (for typed output such as JSON).
    pub type_oid: u32,
}

/// The columns of a read model's rows and which of them form the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Columns in row order.
    pub columns: Vec<ShapeColumn>,
    /// Indices of the key columns, in key order.
    pub key: Vec<usize>,
}

impl Shape {
    /// The key column names.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.key.iter().map(|&i| self.columns[i].name.as_str())
    }
}

/// A value for each key column, in the text form Postgres prints.
pub type Key = Vec<Bytes>;

/// What to do to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or update the row. `TupleValue::UnchangedToast` marks a column whose value
    /// did not come: leave it as it is in the target.
    Upsert(Vec<TupleValue>),
    /// Delete the row.
    Delete,
    /// Recompute the key (a query projection's dead letter: the query failed for it).
    /// Never in a batch handed to a writer.
    Recompute,
}

impl Op {
    /// Whether some column's value is missing (an update must leave it alone).
    pub fn is_partial(&self) -> bool {
        matches!(self, Op::Upsert(row) if row.contains(&TupleValue::UnchangedToast))
    }
}

/// Where an operation came from, for dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `schema.table` of the source change that last touched the key.
    pub table: Arc<str>,
    /// `insert`, `update`, `delete`, `truncate`.
    pub op: &'static str,
}

/// The coalesced operation of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What to do.
    pub op: Op,
    /// The position of the last change folded in.
    pub pos: Position,
    /// Its source.
    pub origin: Origin,
}

/// Hashes batch keys: much faster than SipHash on short keys, randomly seeded per process
/// (keys come from the source database, so collisions cannot be chosen offline).
pub type KeyHasher = foldhash::quality::RandomState;

/// Operations for one target, at most one per key.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The rows' columns.
    pub shape: Arc<Shape>,
    /// Empty the target before applying `entries`.
    pub truncate: Option<Position>,
    /// One operation per key, in first-seen order.
    pub entries: IndexMap<Key, Entry, KeyHasher>,
}

impl Batch {
    /// An empty batch of rows shaped `shape`.
    pub fn new(shape: Arc<Shape>) -> Batch {
        Batch::with_capacity(shape, 0)
    }

    /// An empty batch with room for `keys` keys (no rehashing while it fills).
    pub fn with_capacity(shape: Arc<Shape>, keys: usize) -> Batch {
        Batch {
            shape,
            truncate: None,
            entries: IndexMap::with_capacity_and_hasher(keys, KeyHasher::default()),
        }
    }

    /// No operations and no truncate.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.truncate.is_none()
    }

    /// Fold one operation into the batch.
    pub fn push(&mut self, key: Key, mut entry: Entry) {
        match self.entries.entry(key) {
            indexmap::map::Entry::Occupied(mut prev) => {
                if let (Op::Upsert(old), Op::Upsert(new)) = (&prev.get().op, &mut entry.op) {
                    for (n, o) in new.iter_mut().zip(old) {
                        if *n == TupleValue::UnchangedToast {
                            *n = o.clone();
                        }
                    }
                }
                // The key keeps its first-seen place.
                prev.insert(entry);
            }
            indexmap::map::Entry::Vacant(slot) => {
                slot.insert(entry);
            }
        }
    }

    /// Everything before is void: the target is emptied first.
    pub fn truncate(&mut self, pos: Position) {
        self.entries.clear();
        self.truncate = Some(pos);
    }

    /// Take the entries of `keys` out of the batch.
    pub fn remove_keys(&mut self, keys: &[Key]) -> Vec<(Key, Entry)> {
        keys.iter()
            .filter_map(|k| self.entries.shift_remove_entry(k))
            .collect()
    }
}

/// A key as JSON text (an array of strings): how dead letters store it.
pub fn key_json(key: &Key) -> String {
    Json::Array(
        key.iter()
            .map(|k| Json::String(String::from_utf8_lossy(k).into_owned()))
            .collect(),
    )
    .to_string()
}

/// Parse [`key_json`] back.
pub fn key_from_json(text: &str) -> Option<Key> {
    match serde_json::from_str::<Json>(text).ok()? {
        Json::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Json::String(s) => Some(Bytes::from(s)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// An entry as JSON for a dead letter: enough to apply it again later.
pub fn entry_json(shape: &Shape, entry: &Entry) -> Json {
    let mut obj = Map::new();
    obj.insert("table".into(), Json::String(entry.origin.table.to_string()));
    obj.insert("source_op".into(), Json::String(entry.origin.op.into()));
    match &entry.op {
        Op::Delete => {
            obj.insert("op".into(), "delete".into());
        }
        Op::Recompute => {
            obj.insert("op".into(), "recompute".into());
        }
        Op::Upsert(row) => {
            obj.insert("op".into(), "upsert".into());
            let mut values = Map::new();
            let mut unchanged = Vec::new();
            for (col, v) in shape.columns.iter().zip(row) {
                match v {
                    TupleValue::Null => {
                        values.insert(col.name.clone(), Json::Null);
                    }
                    TupleValue::Text(b) | TupleValue::Binary(b) => {
                        values.insert(
                            col.name.clone(),
                            Json::String(String::from_utf8_lossy(b).into_owned()),
                        );
                    }
                    TupleValue::UnchangedToast => unchanged.push(Json::String(col.name.clone())),
                }
            }
            obj.insert("row".into(), Json::Object(values));
            obj.insert("unchanged".into(), Json::Array(unchanged));
        }
    }
    Json::Object(obj)
}

/// Rebuild an operation from [`entry_json`] for `shape`; `None` if it does not fit the
/// shape any more (a column it needs is gone).
pub fn op_from_json(shape: &Shape, change: &Json) -> Option<Op> {
    match change.get("op")?.as_str()? {
        "delete" => Some(Op::Delete),
        "recompute" => Some(Op::Recompute),
        "upsert" => {
            let row = change.get("row")?.as_object()?;
            shape
                .columns
                .iter()
                .map(|c| match row.get(&c.name) {
                    Some(Json::Null) => Some(TupleValue::Null),
                    Some(Json::String(s)) => Some(TupleValue::Text(Bytes::from(s.clone()))),
                    None => Some(TupleValue::UnchangedToast),
                    Some(_) => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(Op::Upsert)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Arc<Shape> {
        Arc::new(Shape {
            columns: ["id", "a", "b"]
                .iter()
                .map(|n| ShapeColumn {
                    name: (*n).into(),
                    type_oid: 25,
                })
                .collect(),
            key: vec![0],
        })
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::from(s.to_owned()))
    }

    fn entry(op: Op, seq: u64) -> Entry {
        Entry {
            op,
            pos: Position {
                commit_lsn: Lsn(1),
                seq,
            },
            origin: Origin {
                table: "public.t".into(),
                op: "update",
            },
        }
    }

    #[test]
    fn later_operations_win_and_keep_earlier_toast_values() {
        let mut b = Batch::new(shape());
        let k = vec![Bytes::from("1")];
        b.push(
            k.clone(),
            entry(Op::Upsert(vec![t("1"), t("big"), t("x")]), 0),
        );
        b.push(
            k.clone(),
            entry(
                Op::Upsert(vec![t("1"), TupleValue::UnchangedToast, t("y")]),
                1,
            ),
        );
        assert_eq!(b.entries[&k].op, Op::Upsert(vec![t("1"), t("big"), t("y")]));
        b.push(k.clone(), entry(Op::Delete, 2));
        assert_eq!(b.entries[&k].op, Op::Delete);
        assert_eq!(b.entries[&k].pos.seq, 2);
        b.push(
            k.clone(),
            entry(Op::Upsert(vec![t("1"), t("new"), TupleValue::Null]), 3),
        );
        assert!(!b.entries[&k].op.is_partial());
        b.truncate(Position::default());
        assert!(b.entries.is_empty() && !b.is_empty());
    }

    #[test]
    fn dead_letter_json_round_trips() {
        let s = shape();
        let e = entry(
            Op::Upsert(vec![t("1"), TupleValue::UnchangedToast, TupleValue::Null]),
            0,
        );
        let j = entry_json(&s, &e);
        assert_eq!(op_from_json(&s, &j), Some(e.op));
        let k = vec![Bytes::from("a\"b"), Bytes::from("ü")];
        assert_eq!(key_from_json(&key_json(&k)), Some(k));
        let guard_a = Position {
            commit_lsn: Lsn(0xF),
            seq: 0x10,
        }
        .guard_text();
        let guard_b = Position {
            commit_lsn: Lsn(0x10),
            seq: 0,
        }
        .guard_text();
        assert!(guard_a < guard_b);
    }
}
