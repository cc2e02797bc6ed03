//! `pgprism slot create|drop|info`: manage the replication slot and the publication.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use pgprism_pg::{error_text, quote_ident};

use crate::config::Config;

/// `pgprism slot …`
#[derive(Debug, Args)]
pub struct SlotArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config", env = "PGPRISM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    command: SlotCommand,
}

#[derive(Debug, Subcommand)]
enum SlotCommand {
    /// Create the slot (pgoutput) and, if missing, the publication for source.tables.
    Create,
    /// Drop the slot (the WAL it keeps is released; replays before now become impossible).
    Drop {
        /// Drop it even while a walsender streams it (terminates that walsender).
        #[arg(long)]
        force: bool,
    },
    /// Show the slot and the publication.
    Info,
}

/// Run `pgprism slot`.
pub async fn run(args: SlotArgs) -> anyhow::Result<()> {
    let path = args
        .config
        .context("slot needs -c FILE (or PGPRISM_CONFIG)")?;
    let cfg = Config::load(&path, std::env::vars())?;
    let client = crate::session::connect(&cfg.source.dsn).await?;
    let slot = &cfg.source.slot;
    let publication = &cfg.source.publication;
    let exists = |sql: &'static str, name: String| {
        let client = &client;
        async move {
            client
                .query_opt(sql, &[&name])
                .await
                .map(|r| r.is_some())
                .map_err(|e| anyhow::anyhow!("{}", error_text(&e)))
        }
    };
    match args.command {
        SlotCommand::Create => {
            if exists(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                publication.clone(),
            )
            .await?
            {
                println!("publication {publication:?} exists");
            } else {
                anyhow::ensure!(
                    !cfg.source.tables.is_empty(),
                    "publication {publication:?} does not exist and source.tables is empty; list the tables to publish"
                );
                let tables = cfg
                    .source
                    .tables
                    .iter()
                    .map(|t| {
                        pgprism_pg::quote_table_name(t)
                            .with_context(|| format!("source.tables: {t:?} is not a table name"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(", ");
                client
                    .batch_execute(&format!(
                        // A partitioned table's changes under its own name, not its partitions'.
                        "CREATE PUBLICATION {} FOR TABLE {tables} WITH (publish_via_partition_root = true)",
                        quote_ident(publication)
                    ))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("creating publication {publication:?}: {}", error_text(&e))
                    })?;
                println!("publication {publication:?} created for {tables}");
            }
            if exists(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                slot.clone(),
            )
            .await?
            {
                println!("slot {slot:?} exists");
            } else {
                let lsn: String = client
                    .query_one(
                        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[slot],
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("creating slot {slot:?}: {}", error_text(&e)))?
                    .get(0);
                println!("slot {slot:?} created at {lsn}");
            }
        }
        SlotCommand::Drop { force } => {
            let active: Option<i32> = client
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[slot],
                )
                .await?
                .and_then(|r| r.get(0));
            if let Some(pid) = active {
                anyhow::ensure!(
                    force,
                    "slot {slot:?} is being streamed by backend {pid} (a running leader); stop pgprism first, or pass --force"
                );
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await?;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .map_err(|e| anyhow::anyhow!("dropping slot {slot:?}: {}", error_text(&e)))?;
            println!("slot {slot:?} dropped");
        }
        SlotCommand::Info => {
            match client
                .query_opt(
                    "SELECT plugin, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text,
                            (pg_current_wal_lsn() - restart_lsn)::int8, wal_status
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[slot],
                )
                .await?
            {
                None => println!("slot {slot:?}: does not exist (pgprism slot create -c FILE)"),
                Some(r) => {
                    let plugin: Option<String> = r.get(0);
                    let active: bool = r.get(1);
                    let pid: Option<i32> = r.get(2);
                    println!("slot {slot:?}");
                    println!("  plugin          {}", plugin.unwrap_or_default());
                    println!(
                        "  active          {}",
                        if active { format!("yes (backend {})", pid.unwrap_or_default()) } else { "no".into() }
                    );
                    println!("  confirmed flush {}", r.get::<_, Option<String>>(3).unwrap_or_default());
                    println!("  restart lsn     {}", r.get::<_, Option<String>>(4).unwrap_or_default());
                    println!("  retained WAL    {} bytes", r.get::<_, Option<i64>>(5).unwrap_or_default());
                    println!("  wal status      {}", r.get::<_, Option<String>>(6).unwrap_or_default());
                }
            }
            let tables: Vec<String> = client
                .query(
                    "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
                    &[publication],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            println!(
                "publication {publication:?}: {}",
                if tables.is_empty() {
                    "no tables (or missing)".to_owned()
                } else {
                    tables.join(", ")
                }
            );
        }
    }
    Ok(())
}
