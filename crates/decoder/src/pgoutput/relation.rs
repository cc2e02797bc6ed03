//! The relation cache: the last Relation message seen for each relation id.
//!
//! Tuple data carries neither column names nor types; Postgres sends a Relation message
//! before the first change to a relation in a session and again after its schema changes,
//! so the latest message for an id is the shape of every change that follows it.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use std::collections::HashMap;
use std::sync::Arc;

use super::error::{DecodeError, DecodeErrorKind};
use super::messages::{RelId, Relation, TupleData};
use super::value::Value;

/// Relations by id, each the latest Relation message received for it.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<RelId, Arc<Relation>>,
}

impl RelationCache {
    /// An empty cache (the state at the start of a replication session).
    pub fn new() -> RelationCache {
        RelationCache::default()
    }

    /// The cached shape of relation `id`.
    pub fn get(&self, id: RelId) -> Option<&Arc<Relation>> {
        self.relations.get(&id)
    }

    /// Caches `relation`, replacing any earlier shape of the same id; returns the shared copy.
    pub fn insert(&mut self, relation: Relation) -> Arc<Relation> {
        let relation = Arc::new(relation);
        self.relations.insert(relation.id, Arc::clone(&relation));
        relation
    }

    /// Number of cached relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// Whether no relation is cached.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// All cached relations, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Relation>> {
        self.relations.values()
    }
}

impl Relation {
    /// The schema name, `pg_catalog` where Postgres sent an empty one.
    pub fn schema(&self) -> &str {
        if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        }
    }

    /// `schema.name`, unquoted (for logs and messages, not for SQL).
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema(), self.name)
    }

    /// Indices of the replica identity key columns, in column order.
    pub fn key_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
    }

    /// The index of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `tuple` as typed values by column type; `None` for unchanged TOASTed columns.
    ///
    /// Errors carry no message offset (the tuple is already decoded): a column count that
    /// differs from this relation's, or the first column whose value its type rejects.
    pub fn typed_row(&self, tuple: &TupleData) -> Result<Vec<Option<Value>>, DecodeError> {
        if tuple.len() != self.columns.len() {
            return Err(DecodeError::new(
                DecodeErrorKind::ColumnCountMismatch {
                    rel_id: self.id,
                    expected: self.columns.len(),
                    got: tuple.len(),
                },
                0,
            ));
        }
        self.columns
            .iter()
            .zip(tuple)
            .map(|(col, v)| {
                Value::from_tuple(col.type_oid, v).map_err(|error| {
                    DecodeError::new(
                        DecodeErrorKind::InvalidValue {
                            column: col.name.clone(),
                            error,
                        },
                        0,
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::pgoutput::messages::{Column, ReplicaIdentity, TupleValue};
    use crate::pgoutput::value::oid;

    fn relation(id: RelId, name: &str) -> Relation {
        Relation {
            xid: None,
            id,
            namespace: String::new(),
            name: name.to_owned(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                Column {
                    is_key: false,
                    name: "note".into(),
                    type_oid: oid::TEXT,
                    type_modifier: -1,
                },
                Column {
                    is_key: true,
                    name: "id".into(),
                    type_oid: oid::INT4,
                    type_modifier: -1,
                },
            ],
        }
    }

    #[test]
    fn insert_replaces_the_shape_of_the_same_id() {
        let mut cache = RelationCache::new();
        assert!(cache.is_empty());
        cache.insert(relation(1, "a"));
        cache.insert(relation(2, "b"));
        let replaced = cache.insert(relation(1, "a2"));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(1).unwrap().name, "a2");
        assert!(Arc::ptr_eq(cache.get(1).unwrap(), &replaced));
        assert!(cache.get(3).is_none());
    }

    #[test]
    fn helpers_name_schema_and_keys() {
        let r = relation(1, "t");
        assert_eq!(r.qualified_name(), "pg_catalog.t");
        assert_eq!(r.key_columns().collect::<Vec<_>>(), vec![1]);
        assert_eq!(r.column_index("id"), Some(1));
    }

    #[test]
    fn typed_row_converts_by_column_type() {
        let r = relation(1, "t");
        let row = r
            .typed_row(&vec![
                TupleValue::UnchangedToast,
                TupleValue::Text(Bytes::from_static(b"42")),
            ])
            .unwrap();
        assert_eq!(row, vec![None, Some(Value::Int4(42))]);

        let err = r
            .typed_row(&vec![
                TupleValue::Null,
                TupleValue::Text(Bytes::from_static(b"x")),
            ])
            .unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::InvalidValue { ref column, .. } if column == "id")
        );

        let err = r.typed_row(&vec![TupleValue::Null]).unwrap_err();
        assert!(matches!(
            err.kind,
            DecodeErrorKind::ColumnCountMismatch {
                expected: 2,
                got: 1,
                ..
            }
        ));
    }
}
