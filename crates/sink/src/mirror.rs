//! `mirror` projections: one source table's rows copied to one target, column subset
//! and renames allowed. Insert and update become an upsert, delete a delete, truncate a
//! truncate.
//!
//! The row key is the source's primary key (or the configured `key`). A delete, and an
//! update that changes the key, carry the old key only in the replica identity, so the key
//! columns must be part of it; this is checked when the table's first change arrives and
//! refused with the `ALTER TABLE … REPLICA IDENTITY FULL` fix. An unchanged TOASTed value
//! is taken from the old row when `REPLICA IDENTITY FULL` supplied it; otherwise the
//! column stays "unchanged" and the writers leave it alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgprism_decoder::pgoutput::{OldTuple, Relation, ReplicaIdentity, TupleData, TupleValue};
use pgprism_decoder::stream::ChangeKind;

use crate::batch::{Batch, Entry, Key, Op, Origin, Position, Shape, ShapeColumn};
use crate::error::SinkError;
use crate::spec::MirrorSpec;

/// The column mapping for one version of the source relation.
#[derive(Debug)]
struct Map {
    relation: Arc<Relation>,
    shape: Arc<Shape>,
    /// For each target column, its source column index.
    src: Vec<usize>,
    /// For each key column, its source column index.
    key_src: Vec<usize>,
}

/// A mirror projection's change mapping.
#[derive(Debug)]
pub struct Mirror {
    name: Arc<str>,
    schema: String,
    table: String,
    qualified: Arc<str>,
    columns: Option<Vec<String>>,
    rename: BTreeMap<String, String>,
    key: Vec<String>,
    map: Option<Map>,
}

impl Mirror {
    /// A mirror of `spec.source`, keyed by `key` (source column names).
    pub fn new(spec: &MirrorSpec, schema: String, table: String, key: Vec<String>) -> Mirror {
        Mirror {
            name: spec.name.as_str().into(),
            qualified: format!("{schema}.{table}").into(),
            schema,
            table,
            columns: spec.columns.clone(),
            rename: spec.rename.clone(),
            key,
            map: None,
        }
    }

    /// A backfill scan of the source table by the mirror's key, reading every column of
    /// the relation as last seen (in its order, as a change carries them); with that
    /// relation.
    pub(crate) fn backfill_scan(&self) -> Option<(crate::backfill::Scan, Arc<Relation>)> {
        let rel = self.map.as_ref()?.relation.clone();
        let columns: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
        let scan = crate::backfill::Scan::new(&self.schema, &self.table, &self.key, &columns, 0);
        Some((scan, rel))
    }

    /// Whether changes of `rel` feed this projection.
    pub fn is_source(&self, rel: &Relation) -> bool {
        rel.schema() == self.schema && rel.name == self.table
    }

    /// The target row shape for (this version of) the source relation.
    pub fn shape(&mut self, rel: &Arc<Relation>) -> Result<Arc<Shape>, SinkError> {
        Ok(self.map_for(rel)?.shape.clone())
    }

    fn map_for(&mut self, rel: &Arc<Relation>) -> Result<&Map, SinkError> {
        let stale = match &self.map {
            Some(m) => !Arc::ptr_eq(&m.relation, rel) && *m.relation != **rel,
            None => true,
        };
        if stale {
            self.map = Some(self.build(rel)?);
        }
        Ok(self.map.as_ref().expect("map was just built"))
    }

    fn build(&self, rel: &Arc<Relation>) -> Result<Map, SinkError> {
        let find = |name: &str| {
            rel.column_index(name).ok_or_else(|| {
                SinkError::config(
                    &self.name,
                    format!("column {name:?} is not in {} any more", self.qualified),
                )
            })
        };
        let src: Vec<usize> = match &self.columns {
            Some(cols) => cols.iter().map(|c| find(c)).collect::<Result<_, _>>()?,
            None => (0..rel.columns.len()).collect(),
        };
        let key_src: Vec<usize> = self.key.iter().map(|c| find(c)).collect::<Result<_, _>>()?;
        let full = rel.replica_identity == ReplicaIdentity::Full;
        if let Some(&k) = key_src.iter().find(|&&k| !full && !rel.columns[k].is_key) {
            return Err(SinkError::config(
                &self.name,
                format!(
                    "key column {:?} of {} is not in its replica identity, so deletes would \
                     not say which row; fix: ALTER TABLE {} REPLICA IDENTITY FULL",
                    rel.columns[k].name,
                    self.qualified,
                    pgprism_pg::quote_ident(&self.schema)
                        + "."
                        + &pgprism_pg::quote_ident(&self.table)
                ),
            ));
        }
        let columns: Vec<ShapeColumn> = src
            .iter()
            .map(|&i| {
                let c = &rel.columns[i];
                ShapeColumn {
                    name: self.rename.get(&c.name).unwrap_or(&c.name).clone(),
                    type_oid: c.type_oid,
                }
            })
            .collect();
        let key = key_src
            .iter()
            .map(|k| src.iter().position(|s| s == k))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                SinkError::config(
                    &self.name,
                    "every key column must be among the copied columns",
                )
            })?;
        Ok(Map {
            relation: rel.clone(),
            shape: Arc::new(Shape { columns, key }),
            src,
            key_src,
        })
    }

    /// Fold one change into `batch` (whose shape the caller matched with [`Mirror::shape`]).
    pub fn route(
        &mut self,
        kind: &ChangeKind,
        pos: Position,
        batch: &mut Batch,
    ) -> Result<(), SinkError> {
        let qualified = self.qualified.clone();
        let name = self.name.clone();
        let origin = |op| Origin {
            table: qualified.clone(),
            op,
        };
        match kind {
            ChangeKind::Insert { relation, new } => {
                let map = self.map_for(relation)?;
                let key = key_of(map, new, &name)?;
                let row = project(map, new, None);
                let entry = Entry {
                    op: Op::Upsert(row),
                    pos,
                    origin: origin("insert"),
                };
                batch.push(key, entry);
            }
            ChangeKind::Update { relation, old, new } => {
                let map = self.map_for(relation)?;
                let key = key_of(map, new, &name)?;
                let old_full = match old {
                    Some(OldTuple::Full(t)) => Some(t),
                    _ => None,
                };
                if let Some(old) = old {
                    let old_key = key_of(map, old.data(), &name)?;
                    if old_key != key {
                        let entry = Entry {
                            op: Op::Delete,
                            pos,
                            origin: origin("update"),
                        };
                        batch.push(old_key, entry);
                    }
                }
                let row = project(map, new, old_full);
                let entry = Entry {
                    op: Op::Upsert(row),
                    pos,
                    origin: origin("update"),
                };
                batch.push(key, entry);
            }
            ChangeKind::Delete { relation, old } => {
                let map = self.map_for(relation)?;
                let key = key_of(map, old.data(), &name)?;
                let entry = Entry {
                    op: Op::Delete,
                    pos,
                    origin: origin("delete"),
                };
                batch.push(key, entry);
            }
            ChangeKind::Truncate { relations, .. } => {
                if relations.iter().any(|r| self.is_source(r)) {
                    batch.truncate(pos);
                }
            }
            ChangeKind::Message(_) => {}
        }
        Ok(())
    }
}

fn key_of(map: &Map, tuple: &TupleData, projection: &str) -> Result<Key, SinkError> {
    map.key_src
        .iter()
        .map(|&i| match tuple.get(i) {
            Some(TupleValue::Text(b)) => Ok(b.clone()),
            other => Err(SinkError::config(
                projection,
                format!(
                    "key column {:?} of {} came as {other:?}; key columns must be non-null",
                    map.relation.columns[i].name,
                    map.relation.qualified_name()
                ),
            )),
        })
        .collect()
}

fn project(map: &Map, new: &TupleData, old_full: Option<&TupleData>) -> Vec<TupleValue> {
    map.src
        .iter()
        .map(|&i| match new.get(i) {
            Some(TupleValue::UnchangedToast) => match old_full.and_then(|o| o.get(i)) {
                Some(v @ TupleValue::Text(_)) | Some(v @ TupleValue::Null) => v.clone(),
                _ => TupleValue::UnchangedToast,
            },
            Some(v) => v.clone(),
            None => TupleValue::Null,
        })
        .collect()
}
