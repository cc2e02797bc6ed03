//! Partitioned source tables and the publication. A change of a partitioned table is
//! decoded under the name of the partition that holds the row unless the publication has
//! `publish_via_partition_root`: a projection of the partitioned table would then never
//! see it. pgprism creates its publications with the option; one created without it is
//! refused (`pgprism check`, and `pgprism run` before it streams) with the fix.

use pgprism_decoder::stream::StreamError;
use pgprism_pg::quote_ident;
use tokio_postgres::Client;

use crate::config::Config;

/// Every table a projection reads, as `(schema, table)`, once each.
pub(crate) fn source_tables(cfg: &Config) -> Vec<(String, String)> {
    cfg.projections
        .iter()
        .flat_map(|p| p.source.iter().chain(p.keys.keys()))
        .filter_map(|t| pgprism_sink::spec::parse_table_name(t))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The partitioned tables among the projections' sources whose changes the existing
/// publication names after their partitions (it lacks `publish_via_partition_root`), as
/// `schema.table`.
pub(crate) async fn published_as_partitions(
    c: &Client,
    cfg: &Config,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let (schemas, tables): (Vec<String>, Vec<String>) = source_tables(cfg).into_iter().unzip();
    let rows = c
        .query(
            "SELECT n.nspname || '.' || c.relname
               FROM pg_publication p, pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE p.pubname = $1 AND NOT p.pubviaroot AND c.relkind = 'p'
                AND (n.nspname, c.relname) IN (SELECT * FROM unnest($2::text[], $3::text[]))
              ORDER BY 1",
            &[&cfg.source.publication, &schemas, &tables],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The one line that says what is wrong and how to fix it.
pub(crate) fn problem(publication: &str, tables: &[String]) -> String {
    format!(
        "publication {publication:?} lacks publish_via_partition_root, so the changes of the \
         partitioned table{} {} would be named after their partitions and reach no projection; \
         fix: ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
        if tables.len() == 1 { "" } else { "s" },
        tables.join(", "),
        quote_ident(publication)
    )
}

/// Refuse, before streaming, a publication under which a partitioned source's changes
/// would reach no projection: an unusable publication, as the stream says of one that is
/// missing (a definite error: `pgprism run` stops with the one line).
pub(crate) async fn refuse_hidden(c: &Client, cfg: &Config) -> anyhow::Result<()> {
    let hidden = published_as_partitions(c, cfg)
        .await
        .map_err(|e| anyhow::anyhow!("reading the publication: {}", pgprism_pg::error_text(&e)))?;
    if hidden.is_empty() {
        return Ok(());
    }
    Err(StreamError::Config(problem(&cfg.source.publication, &hidden)).into())
}
