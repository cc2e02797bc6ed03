//! `pgprism check`: is everything in place for `pgprism run`? Config, connectivity,
//! `wal_level`, slots and senders, publication, slot, privileges on the source and the
//! sinks, and every projection against the catalogs. One line per finding; every problem
//! says how to fix it; exit 1 if there is any.

use std::path::PathBuf;

use clap::Args;
use pgprism_leader::Epoch;
use pgprism_pg::{Dsn, error_text, quote_ident};
use tokio_postgres::Client;

use pgprism_sink::query::tables_without_statistics;
use pgprism_sink::spec::{ProjectionKind, parse_table_name};

use crate::config::Config;

/// `pgprism check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config", env = "PGPRISM_CONFIG")]
    pub config: PathBuf,
}

/// What was found.
#[derive(Default)]
struct Findings {
    problems: usize,
}

impl Findings {
    fn ok(&self, what: &str) {
        println!("ok       {what}");
    }

    /// Works, but slower than it should: not a problem (the exit code stays 0).
    fn warning(&self, what: &str) {
        println!("WARNING  {what}");
    }

    fn problem(&mut self, what: &str) {
        self.problems += 1;
        println!("PROBLEM  {what}");
    }
}

/// Run `pgprism check`.
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config, std::env::vars())?;
    let mut f = Findings::default();
    f.ok(&format!(
        "config {} ({} sinks, {} projections)",
        args.config.display(),
        cfg.sinks.len(),
        cfg.projections.len()
    ));
    let dsn = &cfg.source.dsn;
    let mut source_client = None;
    match pgprism_pg::connect(dsn).await {
        Err(e) => f.problem(&format!(
            "cannot connect to the source at {} as {:?}: {}; fix: check source.dsn, that the server runs, and pg_hba.conf",
            dsn.target(),
            dsn.user(),
            error_text(&e)
        )),
        Ok((client, _connection)) => {
            f.ok(&format!("source reachable at {} as {:?}", dsn.target(), dsn.user()));
            source(&cfg, dsn, &client, &mut f).await?;
            source_client = Some(client);
        }
    }
    // The projections are checked against the source's catalog: only when it answers.
    if let Some(client) = &source_client {
        for problem in pgprism_sink::projector::check(&cfg.projector(Epoch(0))).await {
            f.problem(&problem.to_string());
        }
        statistics(&cfg, client, &mut f).await;
    }
    if f.problems == 0 {
        println!("all checks passed");
        Ok(())
    } else {
        anyhow::bail!("{} problem(s) found", f.problems)
    }
}

/// Source tables of query projections that hold data but were never analyzed: the
/// projection query's plans over them are guesses (a recompute can be ~25× slower).
async fn statistics(cfg: &Config, client: &Client, f: &mut Findings) {
    for p in cfg
        .projections
        .iter()
        .filter(|p| p.kind == ProjectionKind::Query)
    {
        let tables: Vec<(String, String)> =
            p.keys.keys().filter_map(|t| parse_table_name(t)).collect();
        match tables_without_statistics(client, &tables).await {
            Ok(missing) if missing.is_empty() => f.ok(&format!(
                "projection {:?}: its source tables have planner statistics",
                p.name
            )),
            Ok(missing) => f.warning(&format!(
                "projection {:?}: {} never analyzed (no planner statistics): its query's plans are guesses and a recompute can be many times slower; fix: ANALYZE {}",
                p.name,
                missing.join(", "),
                missing.join(", ")
            )),
            Err(e) => f.warning(&format!(
                "projection {:?}: could not read planner statistics: {}",
                p.name,
                error_text(&e)
            )),
        }
    }
}

async fn one<T>(client: &Client, sql: &str) -> anyhow::Result<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    Ok(client
        .query_one(sql, &[])
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {}", error_text(&e)))?
        .get(0))
}

/// The source's settings, role, publication and slot.
async fn source(cfg: &Config, dsn: &Dsn, c: &Client, f: &mut Findings) -> anyhow::Result<()> {
    let server = dsn.target();
    let wal_level: String = one(c, "SHOW wal_level").await?;
    if wal_level == "logical" {
        f.ok("wal_level = logical");
    } else {
        f.problem(&format!(
            "wal_level is '{wal_level}' on {server}, logical decoding needs 'logical'; fix: ALTER SYSTEM SET wal_level = logical; then restart Postgres"
        ));
    }
    let (superuser, replication): (bool, bool) = {
        let row = c
            .query_one(
                "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    if superuser || replication {
        f.ok(&format!("user {:?} may replicate", dsn.user()));
    } else {
        f.problem(&format!(
            "user {:?} has no REPLICATION attribute, so it cannot stream the slot; fix: ALTER ROLE {} REPLICATION",
            dsn.user(),
            quote_ident(dsn.user())
        ));
    }
    let slot_row = c
        .query_opt(
            "SELECT plugin, database, wal_status, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.source.slot],
        )
        .await?;
    let slots_max: i64 = one::<String>(c, "SHOW max_replication_slots")
        .await?
        .parse()
        .unwrap_or(0);
    let slots_used: i64 = one(c, "SELECT count(*) FROM pg_replication_slots").await?;
    let senders_max: i64 = one::<String>(c, "SHOW max_wal_senders")
        .await?
        .parse()
        .unwrap_or(0);
    let senders_used: i64 = one(c, "SELECT count(*) FROM pg_stat_replication").await?;
    match slot_row {
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let database: Option<String> = row.get(1);
            let wal_status: Option<String> = row.get(2);
            if plugin.as_deref() != Some("pgoutput") {
                f.problem(&format!(
                    "slot {:?} uses plugin {:?}, pgprism needs pgoutput; fix: use another source.slot, or drop this slot",
                    cfg.source.slot, plugin
                ));
            } else if database.as_deref() != Some(dsn.dbname()) {
                f.problem(&format!(
                    "slot {:?} belongs to database {:?}, not {:?}; fix: use another source.slot",
                    cfg.source.slot,
                    database,
                    dsn.dbname()
                ));
            } else if wal_status.as_deref() == Some("lost") {
                f.problem(&format!(
                    "slot {:?} lost WAL it needs (max_slot_wal_keep_size); fix: pgprism slot drop, then rebuild the read models from a new slot",
                    cfg.source.slot
                ));
            } else {
                f.ok(&format!("slot {:?} (pgoutput, {})", cfg.source.slot, wal_status.unwrap_or_default()));
            }
        }
        None if !cfg.source.create => f.problem(&format!(
            "slot {:?} does not exist and source.create is false; fix: pgprism slot create -c FILE",
            cfg.source.slot
        )),
        None if slots_used >= slots_max => f.problem(&format!(
            "slot {:?} must be created but all {slots_max} replication slots are in use; fix: raise max_replication_slots (restart) or drop an unused slot",
            cfg.source.slot
        )),
        None => f.ok(&format!("slot {:?} will be created by the first leader", cfg.source.slot)),
    }
    if senders_used >= senders_max {
        f.problem(&format!(
            "all {senders_max} WAL senders are in use; fix: raise max_wal_senders (restart)"
        ));
    } else {
        f.ok(&format!(
            "WAL senders: {senders_used} of {senders_max} in use"
        ));
    }
    let publication = c
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&cfg.source.publication],
        )
        .await?;
    let wanted: Vec<String> = crate::partitions::source_tables(cfg)
        .into_iter()
        .map(|(s, n)| format!("{s}.{n}"))
        .collect();
    match publication {
        Some(row) => {
            let all: bool = row.get(0);
            let hidden = crate::partitions::published_as_partitions(c, cfg).await?;
            if !hidden.is_empty() {
                f.problem(&crate::partitions::problem(&cfg.source.publication, &hidden));
            }
            let published: Vec<String> = c
                .query(
                    "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
                    &[&cfg.source.publication],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            // A partitioned table published under its partitions' names is listed as those:
            // said above, with its own fix.
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|t| !all && !published.contains(t) && !hidden.contains(t))
                .collect();
            if missing.is_empty() {
                f.ok(&format!("publication {:?} covers every source table", cfg.source.publication));
            } else {
                for t in missing {
                    f.problem(&format!(
                        "publication {:?} does not include {t}, which a projection reads; fix: ALTER PUBLICATION {} ADD TABLE {}",
                        cfg.source.publication,
                        quote_ident(&cfg.source.publication),
                        qualified(t)
                    ));
                }
            }
        }
        None if !cfg.source.create || cfg.source.tables.is_empty() => f.problem(&format!(
            "publication {:?} does not exist; fix: CREATE PUBLICATION {} FOR TABLE {} (or set source.tables and source.create = true)",
            cfg.source.publication,
            quote_ident(&cfg.source.publication),
            wanted.iter().map(|t| qualified(t)).collect::<Vec<_>>().join(", ")
        )),
        None => {
            let mut ok = true;
            for t in &cfg.source.tables {
                let owner: Option<bool> = c
                    .query_one(
                        "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = to_regclass($1)",
                        &[&qualified(t)],
                    )
                    .await
                    .ok()
                    .and_then(|r| r.get(0));
                match owner {
                    None => {
                        ok = false;
                        f.problem(&format!(
                            "source.tables names {t}, which does not exist on the source; fix: create it or remove it from source.tables"
                        ));
                    }
                    Some(false) if !superuser => {
                        ok = false;
                        f.problem(&format!(
                            "user {:?} does not own {t}, so it cannot create the publication; fix: run CREATE PUBLICATION {} FOR TABLE … as the owner",
                            dsn.user(),
                            quote_ident(&cfg.source.publication)
                        ));
                    }
                    _ => {}
                }
            }
            if ok {
                f.ok(&format!("publication {:?} will be created by the first leader", cfg.source.publication));
            }
        }
    }
    let can_state: bool = one(
        c,
        "SELECT CASE WHEN to_regnamespace('pgprism') IS NULL
                     THEN has_database_privilege(current_database(), 'CREATE')
                     ELSE has_schema_privilege('pgprism', 'CREATE, USAGE') END",
    )
    .await?;
    if can_state {
        f.ok("pgprism's election tables can be created on the source");
    } else {
        f.problem(&format!(
            "user {:?} cannot create the pgprism schema on the source (election and epochs live there); fix: GRANT CREATE ON DATABASE {} TO {}",
            dsn.user(),
            quote_ident(dsn.dbname()),
            quote_ident(dsn.user())
        ));
    }
    Ok(())
}

fn qualified(t: &str) -> String {
    pgprism_pg::quote_table_name(t).unwrap_or_else(|| t.to_owned())
}
