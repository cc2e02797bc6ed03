//! The Postgres writer: a batch becomes a handful of set-based statements inside the
//! sink's transaction, never one statement per row.
//!
//! Values travel as `text[]` arrays (binary-encoded parameters, so nothing is ever
//! interpolated into SQL), are `unnest`ed, and cast to each target column's type as the
//! catalog names it (`format_type`), which runs the type's own input function: the text
//! Postgres printed on the source is read back exactly. Identifiers are always quoted.
//!
//! Statements per batch: `TRUNCATE` (if the source was truncated), one `DELETE … USING
//! unnest(…)`, one `INSERT … SELECT … FROM unnest(…) ON CONFLICT (key) DO UPDATE` for
//! whole rows, and one `UPDATE … FROM unnest(…)` per set of present columns for rows with
//! unchanged TOASTed values (those columns are left alone; nothing is ever written in
//! their place).
//!
//! Large sets of whole rows (a backlog, a replay, a bulk load upstream) take the bulk
//! path instead: `COPY` in text format into a session-local staging table whose columns
//! have the target's types (so `COPY` runs the same input functions the casts would), then
//! one `INSERT … SELECT … FROM stage ON CONFLICT (key) DO UPDATE`. The staging table is
//! `ON COMMIT DELETE ROWS`, so a committed or rolled-back transaction leaves it empty;
//! inside one transaction a second use empties it first.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use pgprism_decoder::pgoutput::TupleValue;
use pgprism_pg::quote_ident;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, SimpleQueryMessage};

use crate::batch::{Entry, Key, Op, Shape};
use crate::error::SinkError;

/// Whole-row upserts from this many on go through `COPY` and a staging table; fewer take
/// one `unnest` statement (one round trip instead of three).
pub const COPY_MIN_ROWS: usize = 512;

/// `COPY` data is sent in pieces of about this size, so the server parses while the next
/// piece is formatted.
const COPY_PIECE: usize = 256 * 1024;

/// Rows [`PgTable::stage`] copied into a staging table, for [`PgTable::apply_staged`].
#[derive(Debug, Default)]
#[must_use]
pub struct Staged {
    /// The staging table's quoted name, when the bulk path was taken.
    stage: Option<String>,
}

/// The whole rows (no unchanged TOAST values) among `entries`.
fn whole_rows<'a>(entries: &[(&Key, &'a Entry)]) -> Vec<&'a [TupleValue]> {
    entries
        .iter()
        .filter_map(|(_, e)| match &e.op {
            Op::Upsert(row) if !e.op.is_partial() => Some(row.as_slice()),
            _ => None,
        })
        .collect()
}

/// A target table as its catalog describes it.
#[derive(Debug)]
pub struct PgTable {
    target: String,
    /// `"schema"."table"`.
    quoted: String,
    /// Column name → SQL type (`format_type`).
    types: HashMap<String, String>,
    /// A staging table may hold rows of the open transaction (it is known empty after a
    /// commit or rollback: see [`PgTable::transaction_ended`]).
    staged: AtomicBool,
}

/// What one application did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted or updated.
    pub upserted: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Partial updates (unchanged TOAST) whose row was not in the target.
    pub missing: u64,
}

impl PgTable {
    /// Look `schema.table` up in the sink's catalog; a clear error if it is not there.
    pub async fn load(
        client: &impl GenericClient,
        target: &str,
        schema: &str,
        table: &str,
    ) -> Result<PgTable, SinkError> {
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                   FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                    AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''",
                &[&schema, &table],
            )
            .await
            .map_err(SinkError::pg(target, "reading the target table's columns"))?;
        if rows.is_empty() {
            return Err(SinkError::config(
                target,
                format!(
                    "table {}.{} does not exist in the sink; create it (see sql/read_models.sql)",
                    quote_ident(schema),
                    quote_ident(table)
                ),
            ));
        }
        Ok(PgTable {
            target: target.to_owned(),
            quoted: format!("{}.{}", quote_ident(schema), quote_ident(table)),
            types: rows.into_iter().map(|r| (r.get(0), r.get(1))).collect(),
            staged: AtomicBool::new(false),
        })
    }

    /// The same table for another session (whose staging tables are its own).
    pub fn for_another_session(&self) -> PgTable {
        PgTable {
            target: self.target.clone(),
            quoted: self.quoted.clone(),
            types: self.types.clone(),
            staged: AtomicBool::new(false),
        }
    }

    /// The sink transaction committed or rolled back: staging tables are empty again.
    pub fn transaction_ended(&self) {
        self.staged.store(false, Ordering::Relaxed);
    }

    /// The quoted table name.
    pub fn quoted(&self) -> &str {
        &self.quoted
    }

    /// Check that every column of `shape` exists in the table.
    pub fn check_shape(&self, shape: &Shape) -> Result<(), SinkError> {
        for c in &shape.columns {
            if !self.types.contains_key(&c.name) {
                return Err(SinkError::config(
                    &self.target,
                    format!(
                        "the target table {} has no column {:?}; add it (ALTER TABLE {} ADD COLUMN {} …) or leave it out of the projection",
                        self.quoted,
                        c.name,
                        self.quoted,
                        quote_ident(&c.name)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn cast(&self, name: &str) -> &str {
        self.types.get(name).map_or("text", String::as_str)
    }

    /// `TRUNCATE` the table.
    pub async fn truncate(&self, tx: &impl GenericClient) -> Result<(), SinkError> {
        tx.batch_execute(&format!("TRUNCATE {}", self.quoted))
            .await
            .map_err(SinkError::pg(&self.target, "truncating the target"))
    }

    /// Apply `entries` (one per key) set-based.
    pub async fn apply(
        &self,
        tx: &impl GenericClient,
        shape: &Shape,
        entries: &[(&Key, &Entry)],
    ) -> Result<Applied, SinkError> {
        let staged = self.stage(tx, shape, entries).await?;
        self.apply_staged(tx, shape, entries, staged).await
    }

    /// The first half of [`PgTable::apply`]: bulk whole rows are copied into the
    /// staging table (nothing of the target is touched or locked yet).
    pub async fn stage(
        &self,
        tx: &impl GenericClient,
        shape: &Shape,
        entries: &[(&Key, &Entry)],
    ) -> Result<Staged, SinkError> {
        let whole = whole_rows(entries);
        if whole.len() < COPY_MIN_ROWS {
            return Ok(Staged::default());
        }
        let stage = self.copy_to_stage(tx, shape, &whole).await?;
        Ok(Staged { stage: Some(stage) })
    }

    /// The second half of [`PgTable::apply`] (the same `entries`, staged by
    /// [`PgTable::stage`] in the same transaction).
    pub async fn apply_staged(
        &self,
        tx: &impl GenericClient,
        shape: &Shape,
        entries: &[(&Key, &Entry)],
        staged: Staged,
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        let deletes: Vec<&Key> = entries
            .iter()
            .filter(|(_, e)| e.op == Op::Delete)
            .map(|(k, _)| *k)
            .collect();
        if !deletes.is_empty() {
            applied.deleted = self.delete(tx, shape, &deletes).await?;
        }
        applied.upserted += match staged.stage {
            Some(stage) => self.upsert_staged(tx, shape, &stage).await?,
            None => {
                let whole = whole_rows(entries);
                match whole.is_empty() {
                    true => 0,
                    false => self.upsert(tx, shape, &whole).await?,
                }
            }
        };
        let mut partial: HashMap<Vec<bool>, Vec<&[TupleValue]>> = HashMap::new();
        for (_, e) in entries {
            if let Op::Upsert(row) = &e.op
                && e.op.is_partial()
            {
                let mask = row
                    .iter()
                    .map(|v| *v != TupleValue::UnchangedToast)
                    .collect();
                partial.entry(mask).or_default().push(row);
            }
        }
        for (mask, rows) in partial {
            let n = self.update_present(tx, shape, &mask, &rows).await?;
            applied.upserted += n;
            applied.missing += rows.len() as u64 - n;
        }
        if applied.missing > 0 {
            tracing::warn!(
                target_name = %self.target,
                rows = applied.missing,
                "updates with unchanged TOAST values found no row in the target; \
                 the target is missing rows the source has (backfill it)"
            );
        }
        Ok(applied)
    }

    async fn delete(
        &self,
        tx: &impl GenericClient,
        shape: &Shape,
        keys: &[&Key],
    ) -> Result<u64, SinkError> {
        let n = shape.key.len();
        let arrays = (0..n)
            .map(|j| {
                keys.iter()
                    .map(|k| text(&self.target, &k[j]).map(Some))
                    .collect()
            })
            .collect::<Result<Vec<Vec<Option<&str>>>, SinkError>>()?;
        let cond = shape
            .key
            .iter()
            .enumerate()
            .map(|(j, &c)| {
                let name = &shape.columns[c].name;
                format!("t.{} = k.c{j}::{}", quote_ident(name), self.cast(name))
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "DELETE FROM {} AS t USING {} AS k({}) WHERE {cond}",
            self.quoted,
            unnest(n),
            aliases(n)
        );
        self.run(tx, &sql, &arrays, "deleting rows").await
    }

    /// `INSERT … ON CONFLICT (key) DO UPDATE` (or `DO NOTHING` when every column is key)
    /// from `source`, whose columns are `c0 …` in shape order; `cast` converts them.
    fn upsert_sql(&self, shape: &Shape, source: &str, cast: bool) -> String {
        let cols = shape
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let select = shape
            .columns
            .iter()
            .enumerate()
            .map(|(j, c)| match cast {
                true => format!("u.c{j}::{}", self.cast(&c.name)),
                false => format!("u.c{j}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let key = shape
            .key_names()
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(", ");
        let set = shape
            .columns
            .iter()
            .enumerate()
            .filter(|(j, _)| !shape.key.contains(j))
            .map(|(_, c)| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
            .collect::<Vec<_>>();
        let action = if set.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", set.join(", "))
        };
        format!(
            "INSERT INTO {} AS t ({cols}) SELECT {select} FROM {source} \
             ON CONFLICT ({key}) DO {action}",
            self.quoted,
        )
    }

    async fn upsert(
        &self,
        tx: &impl GenericClient,
        shape: &Shape,
        rows: &[&[TupleValue]],
    ) -> Result<u64, SinkError> {
        let n = shape.columns.len();
        let arrays = (0..n)
            .map(|j| rows.iter().map(|r| cell(&self.target, &r[j])).collect())
            .collect::<Result<Vec<Vec<Option<&str>>>, SinkError>>()?;
        let source = format!("{} AS u({})", unnest(n), aliases(n));
        let sql = self.upsert_sql(shape, &source, true);
        self.run(tx, &sql, &arrays, "upserting rows").await
    }

    /// The bulk path, first half: `COPY` into the staging table (created if needed,
    /// emptied if used before in this transaction); its quoted name.
    async fn copy_to_stage(
        &self,
        tx: &impl GenericClient,
        shape: &Shape,
        rows: &[&[TupleValue]],
    ) -> Result<String, SinkError> {
        let types: Vec<&str> = shape.columns.iter().map(|c| self.cast(&c.name)).collect();
        let stage = {
            let mut h = DefaultHasher::new();
            (&self.quoted, &types).hash(&mut h);
            quote_ident(&format!("pgprism_stage_{:016x}", h.finish()))
        };
        let columns = types
            .iter()
            .enumerate()
            .map(|(j, t)| format!("c{j} {t}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut prepare =
            format!("CREATE TEMP TABLE IF NOT EXISTS {stage} ({columns}) ON COMMIT DELETE ROWS");
        if self.staged.swap(true, Ordering::Relaxed) {
            // Used before in this transaction (a replay across flushes, a bisection).
            prepare.push_str(&format!("; TRUNCATE pg_temp.{stage}"));
        }
        tx.batch_execute(&prepare)
            .await
            .map_err(SinkError::pg(&self.target, "preparing the staging table"))?;

        let copy = tx
            .client()
            .copy_in::<_, Bytes>(&format!("COPY pg_temp.{stage} FROM STDIN"))
            .await
            .map_err(SinkError::pg(
                &self.target,
                "starting COPY into the staging table",
            ))?;
        let mut copy = pin!(copy);
        let mut buf = BytesMut::with_capacity(COPY_PIECE + 4096);
        for row in rows {
            copy_row(&mut buf, row);
            if buf.len() >= COPY_PIECE {
                copy.send(buf.split().freeze())
                    .await
                    .map_err(SinkError::pg(
                        &self.target,
                        "copying rows into the staging table",
                    ))?;
            }
        }
        if !buf.is_empty() {
            copy.send(buf.freeze()).await.map_err(SinkError::pg(
                &self.target,
                "copying rows into the staging table",
            ))?;
        }
        copy.as_mut().finish().await.map_err(SinkError::pg(
            &self.target,
            "copying rows into the staging table",
        ))?;

        Ok(stage)
    }

    /// The bulk path, second half: one upsert from the staging table.
    async fn upsert_staged(
        &self,
        tx: &impl GenericClient,
        shape: &Shape,
        stage: &str,
    ) -> Result<u64, SinkError> {
        let source = format!("pg_temp.{stage} AS u");
        let sql = self.upsert_sql(shape, &source, false);
        let done = tx
            .simple_query(&sql)
            .await
            .map_err(SinkError::pg(&self.target, "upserting rows"))?;
        Ok(done
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0))
    }

    async fn update_present(
        &self,
        tx: &impl GenericClient,
        shape: &Shape,
        mask: &[bool],
        rows: &[&[TupleValue]],
    ) -> Result<u64, SinkError> {
        let present: Vec<usize> = (0..mask.len()).filter(|&j| mask[j]).collect();
        let arrays = present
            .iter()
            .map(|&j| rows.iter().map(|r| cell(&self.target, &r[j])).collect())
            .collect::<Result<Vec<Vec<Option<&str>>>, SinkError>>()?;
        let alias = |j: usize| {
            present
                .iter()
                .position(|&p| p == j)
                .expect("key is present")
        };
        let set = present
            .iter()
            .enumerate()
            .filter(|(_, j)| !shape.key.contains(j))
            .map(|(a, &j)| {
                let name = &shape.columns[j].name;
                format!("{} = u.c{a}::{}", quote_ident(name), self.cast(name))
            })
            .collect::<Vec<_>>();
        if set.is_empty() {
            return Ok(rows.len() as u64);
        }
        let cond = shape
            .key
            .iter()
            .map(|&j| {
                let name = &shape.columns[j].name;
                format!(
                    "t.{} = u.c{}::{}",
                    quote_ident(name),
                    alias(j),
                    self.cast(name)
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "UPDATE {} AS t SET {} FROM {} AS u({}) WHERE {cond}",
            self.quoted,
            set.join(", "),
            unnest(present.len()),
            aliases(present.len())
        );
        self.run(
            tx,
            &sql,
            &arrays,
            "updating rows with unchanged TOAST values",
        )
        .await
    }

    async fn run(
        &self,
        tx: &impl GenericClient,
        sql: &str,
        arrays: &[Vec<Option<&str>>],
        context: &'static str,
    ) -> Result<u64, SinkError> {
        // Typed parameters: one round trip, no separate prepare.
        let params: Vec<(&(dyn ToSql + Sync), Type)> = arrays
            .iter()
            .map(|a| (a as &(dyn ToSql + Sync), Type::TEXT_ARRAY))
            .collect();
        tx.execute_typed(sql, &params)
            .await
            .map_err(SinkError::pg(&self.target, context))
    }
}

fn text<'a>(target: &str, b: &'a [u8]) -> Result<&'a str, SinkError> {
    std::str::from_utf8(b).map_err(|_| {
        SinkError::config(
            target,
            "a value is not valid UTF-8: pgprism needs a source database with UTF8 encoding",
        )
    })
}

fn cell<'a>(target: &str, v: &'a TupleValue) -> Result<Option<&'a str>, SinkError> {
    match v {
        TupleValue::Text(b) | TupleValue::Binary(b) => text(target, b).map(Some),
        TupleValue::Null | TupleValue::UnchangedToast => Ok(None),
    }
}

/// One row in `COPY` text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_row(buf: &mut BytesMut, row: &[TupleValue]) {
    for (j, v) in row.iter().enumerate() {
        if j > 0 {
            buf.extend_from_slice(b"\t");
        }
        match v {
            TupleValue::Text(b) | TupleValue::Binary(b) => copy_escape(buf, b),
            TupleValue::Null | TupleValue::UnchangedToast => buf.extend_from_slice(b"\\N"),
        }
    }
    buf.extend_from_slice(b"\n");
}

fn copy_escape(buf: &mut BytesMut, mut value: &[u8]) {
    while let Some(i) = value
        .iter()
        .position(|c| matches!(c, b'\\' | b'\n' | b'\r' | b'\t'))
    {
        buf.extend_from_slice(&value[..i]);
        buf.extend_from_slice(match value[i] {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => b"\\t",
        });
        value = &value[i + 1..];
    }
    buf.extend_from_slice(value);
}

/// `unnest($1::text[], …, $n::text[])`
fn unnest(n: usize) -> String {
    let args = (1..=n)
        .map(|i| format!("${i}::text[]"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("unnest({args})")
}

/// `c0, …, c{n-1}`
fn aliases(n: usize) -> String {
    (0..n)
        .map(|j| format!("c{j}"))
        .collect::<Vec<_>>()
        .join(", ")
}
