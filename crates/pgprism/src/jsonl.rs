//! The JSONL format of `pgprism tail`: one object per change, written straight into a
//! byte buffer (no intermediate JSON tree: tail must keep up with the walsender).
//!
//! ```json
//! {"lsn":"0/1A2B3C8","commit_lsn":"0/1A2B4F0","xid":742,"commit_time":"2026-11-23T10:00:00.123456Z",
//!  "op":"update","schema":"public","table":"orders",
//!  "key":{"id":"6f1c…"},"new":{"id":"6f1c…","status":"shipped"},"old":null,"unchanged_toast":[]}
//! ```
//!
//! Values: JSON numbers for integer and finite float types, booleans for bool, strings in
//! Postgres text form for everything else. `key` holds the replica identity columns (from
//! the old tuple when Postgres sent one, else from the new row), `null` when the table
//! has none (REPLICA IDENTITY NOTHING). Unchanged TOASTed columns are left out of `new`
//! and listed in `unchanged_toast`. A truncate prints one line per table; a logical
//! message has `op` `message`, its `prefix`, `transactional`, and `content` (text if it
//! is UTF-8, else bytea text form `\x…`).

use std::io::Write;

use pgprism_decoder::Lsn;
use pgprism_decoder::pgoutput::{
    LogicalMessage, OldTuple, Relation, TupleData, TupleValue, Value, write_json_str,
};
use pgprism_decoder::stream::{Change, ChangeKind, TxnInfo};

/// Append one line for `change` to `out`.
pub fn write_change(out: &mut Vec<u8>, txn: &TxnInfo, change: &Change) {
    match &change.kind {
        ChangeKind::Insert { relation, new } => {
            head(out, change.lsn, Some(txn), "insert", relation);
            out.extend_from_slice(b",\"key\":");
            key(out, relation, new);
            out.extend_from_slice(b",\"new\":");
            row(out, relation, new, false);
            out.extend_from_slice(b",\"old\":null,\"unchanged_toast\":[]}\n");
        }
        ChangeKind::Update { relation, old, new } => {
            head(out, change.lsn, Some(txn), "update", relation);
            out.extend_from_slice(b",\"key\":");
            key(out, relation, old.as_ref().map_or(new, |o| o.data()));
            out.extend_from_slice(b",\"new\":");
            row(out, relation, new, false);
            out.extend_from_slice(b",\"old\":");
            match old {
                Some(old) => old_row(out, relation, old),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"unchanged_toast\":[");
            let mut first = true;
            for (col, v) in relation.columns.iter().zip(new) {
                if matches!(v, TupleValue::UnchangedToast) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    write_json_str(out, &col.name);
                }
            }
            out.extend_from_slice(b"]}\n");
        }
        ChangeKind::Delete { relation, old } => {
            head(out, change.lsn, Some(txn), "delete", relation);
            out.extend_from_slice(b",\"key\":");
            key(out, relation, old.data());
            out.extend_from_slice(b",\"new\":null,\"old\":");
            old_row(out, relation, old);
            out.extend_from_slice(b",\"unchanged_toast\":[]}\n");
        }
        ChangeKind::Truncate {
            relations,
            cascade,
            restart_identity,
        } => {
            for relation in relations {
                head(out, change.lsn, Some(txn), "truncate", relation);
                let _ = writeln!(
                    out,
                    ",\"cascade\":{cascade},\"restart_identity\":{restart_identity},\"key\":null,\"new\":null,\"old\":null,\"unchanged_toast\":[]}}"
                );
            }
        }
        ChangeKind::Message(msg) => write_message(out, Some(txn), msg),
    }
}

/// Append one line for a logical message; `txn` is `None` for a non-transactional one.
pub fn write_message(out: &mut Vec<u8>, txn: Option<&TxnInfo>, msg: &LogicalMessage) {
    positions(out, msg.lsn, txn);
    let _ = write!(
        out,
        ",\"op\":\"message\",\"transactional\":{},\"prefix\":",
        msg.transactional
    );
    write_json_str(out, &msg.prefix);
    out.extend_from_slice(b",\"content\":");
    match std::str::from_utf8(&msg.content) {
        Ok(text) => write_json_str(out, text),
        Err(_) => Value::Bytea(msg.content.to_vec()).write_json(out),
    }
    out.extend_from_slice(b"}\n");
}

fn positions(out: &mut Vec<u8>, lsn: Lsn, txn: Option<&TxnInfo>) {
    let _ = write!(out, "{{\"lsn\":\"{lsn}\"");
    match txn {
        Some(t) => {
            let _ = write!(
                out,
                ",\"commit_lsn\":\"{}\",\"xid\":{},\"commit_time\":\"",
                t.commit_lsn, t.xid
            );
            rfc3339(out, t.commit_time);
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"commit_lsn\":null,\"xid\":null,\"commit_time\":null"),
    }
}

fn head(out: &mut Vec<u8>, lsn: Lsn, txn: Option<&TxnInfo>, op: &str, relation: &Relation) {
    positions(out, lsn, txn);
    let _ = write!(out, ",\"op\":\"{op}\",\"schema\":");
    write_json_str(out, relation.schema());
    out.extend_from_slice(b",\"table\":");
    write_json_str(out, &relation.name);
}

/// The identity columns of `tuple`, or `null` when the relation has none.
fn key(out: &mut Vec<u8>, relation: &Relation, tuple: &TupleData) {
    if relation.key_columns().next().is_none() {
        out.extend_from_slice(b"null");
        return;
    }
    out.push(b'{');
    let mut first = true;
    for (col, v) in relation.columns.iter().zip(tuple) {
        if col.is_key {
            field(out, &mut first, &col.name, col.type_oid, v);
        }
    }
    out.push(b'}');
}

/// The old tuple of an update or delete: the whole row under REPLICA IDENTITY FULL, else
/// only the key columns (Postgres sends the others as nulls).
fn old_row(out: &mut Vec<u8>, relation: &Relation, old: &OldTuple) {
    row(out, relation, old.data(), !matches!(old, OldTuple::Full(_)));
}

/// All columns of `tuple` (only the key columns when `key_only`), unchanged TOAST left out.
fn row(out: &mut Vec<u8>, relation: &Relation, tuple: &TupleData, key_only: bool) {
    out.push(b'{');
    let mut first = true;
    for (col, v) in relation.columns.iter().zip(tuple) {
        if matches!(v, TupleValue::UnchangedToast) || (key_only && !col.is_key) {
            continue;
        }
        field(out, &mut first, &col.name, col.type_oid, v);
    }
    out.push(b'}');
}

fn field(out: &mut Vec<u8>, first: &mut bool, name: &str, type_oid: u32, v: &TupleValue) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    write_json_str(out, name);
    out.push(b':');
    match Value::from_tuple(type_oid, v) {
        Ok(Some(value)) => value.write_json(out),
        Ok(None) => out.extend_from_slice(b"null"),
        Err(e) => {
            // A value our typing rejects is still printed, as the text Postgres sent.
            tracing::warn!(column = name, type_oid, error = %e, "value kept as text");
            match v {
                TupleValue::Text(b) | TupleValue::Binary(b) => {
                    write_json_str(out, &String::from_utf8_lossy(b));
                }
                TupleValue::Null | TupleValue::UnchangedToast => out.extend_from_slice(b"null"),
            }
        }
    }
}

/// Postgres time (µs since 2000-01-01 UTC) as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn rfc3339(out: &mut Vec<u8>, pg_micros: i64) {
    const UNIX_TO_PG_DAYS: i64 = 10_957;
    let days = pg_micros.div_euclid(86_400_000_000) + UNIX_TO_PG_DAYS;
    let micros_of_day = pg_micros.rem_euclid(86_400_000_000);
    let (y, m, d) = civil_from_days(days);
    let secs = micros_of_day / 1_000_000;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        micros_of_day % 1_000_000
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(us: i64) -> String {
        let mut out = Vec::new();
        rfc3339(&mut out, us);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn commit_times_are_rfc3339_utc() {
        assert_eq!(time(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(time(-1), "1999-12-31T23:59:59.999999Z");
        // 2026-11-23T10:00:00.123456Z
        assert_eq!(time(848_743_200_123_456), "2026-11-23T10:00:00.123456Z");
        assert_eq!(time(60 * 86_400_000_000), "2000-03-01T00:00:00.000000Z");
    }
}
