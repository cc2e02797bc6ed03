//! `pgprism dlq`: list the dead letters of a pipeline, and ask the leader to retry or
//! discard them.
//!
//! Dead letters live in `pgprism.dead_letters` of the database that holds the target's
//! offsets: the Postgres sink itself for Postgres targets, the source database for Redis
//! targets. `retry` and `discard` only mark letters (whole keys, so per-key order holds);
//! the leader carries the request out at its next flush, inside its own fenced
//! transaction, so a request never races the stream.

use anyhow::Context;
use clap::{Args, Subcommand};
use pgprism_pg::Dsn;
use pgprism_sink::dead_letter::{self, Action, Selection, Stored};

/// `pgprism dlq …`
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        select: Select,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-apply the selected letters' keys, in order, once the cause is fixed.
    Retry {
        #[command(flatten)]
        select: Select,
    },
    /// Drop the selected letters' keys (their changes are lost to the target).
    Discard {
        #[command(flatten)]
        select: Select,
    },
}

#[derive(Debug, Args)]
struct Select {
    /// The configuration file: dead letters are read from every Postgres sink and, for
    /// Redis targets, the source.
    #[arg(short = 'c', long = "config", env = "PGPRISM_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Instead of -c: the one database holding the dead letters.
    #[arg(long, env = "PGPRISM_DLQ_DSN", conflicts_with = "config")]
    dsn: Option<String>,
    /// The pipeline (default: the config's, else "pgprism").
    #[arg(long)]
    pipeline: Option<String>,
    /// Only this target (`projection.sink` unless named).
    #[arg(long)]
    target: Option<String>,
    /// Only these letters (for retry and discard: every letter of their keys).
    #[arg(long = "id")]
    ids: Vec<i64>,
}

impl Select {
    fn selection(&self) -> Selection {
        Selection {
            target: self.target.clone(),
            ids: self.ids.clone(),
        }
    }

    /// The pipeline and the databases that may hold its dead letters.
    fn places(&self) -> anyhow::Result<(String, Vec<Dsn>)> {
        match (&self.config, &self.dsn) {
            (Some(path), _) => {
                let cfg = crate::config::Config::load(path, std::env::vars())?;
                let mut dsns: Vec<Dsn> = cfg.sinks.values().filter_map(|s| s.dsn.clone()).collect();
                dsns.push(cfg.source.dsn.clone());
                // The same database once (user, host, port, database, sslmode).
                let mut seen = std::collections::BTreeSet::new();
                dsns.retain(|d| seen.insert(d.to_string()));
                Ok((self.pipeline.clone().unwrap_or(cfg.pipeline), dsns))
            }
            (None, Some(dsn)) => Ok((
                self.pipeline
                    .clone()
                    .unwrap_or_else(|| "pgprism".to_owned()),
                vec![Dsn::parse(dsn)?],
            )),
            (None, None) => anyhow::bail!("give -c FILE (or PGPRISM_CONFIG), or --dsn"),
        }
    }
}

/// Whether the database has pgprism's dead-letter table.
async fn has_table(client: &tokio_postgres::Client) -> anyhow::Result<bool> {
    Ok(client
        .query_one(
            "SELECT to_regclass('pgprism.dead_letters') IS NOT NULL",
            &[],
        )
        .await?
        .get(0))
}

/// Run `pgprism dlq`.
pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List { select, json } => {
            let (pipeline, places) = select.places()?;
            let mut letters = Vec::new();
            for dsn in &places {
                let client = crate::session::connect(dsn).await?;
                if has_table(&client).await? {
                    letters.extend(
                        dead_letter::list(&client, &pipeline, &select.selection())
                            .await
                            .context("listing dead letters")?,
                    );
                }
            }
            if json {
                for l in &letters {
                    println!("{}", letter_json(l));
                }
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                for l in &letters {
                    let action = l
                        .action
                        .as_deref()
                        .map(|a| format!(" ({a} requested)"))
                        .unwrap_or_default();
                    println!(
                        "#{} {} {}+{} {} {} {}{action}\n    {}",
                        l.id,
                        l.target,
                        l.commit_lsn,
                        l.seq,
                        l.status,
                        l.sqlstate.as_deref().unwrap_or("-"),
                        l.key,
                        l.error
                    );
                }
                println!("{} dead letter(s)", letters.len());
            }
            Ok(())
        }
        DlqCommand::Retry { select } => mark(&select, Action::Retry).await,
        DlqCommand::Discard { select } => mark(&select, Action::Discard).await,
    }
}

async fn mark(select: &Select, action: Action) -> anyhow::Result<()> {
    let (pipeline, places) = select.places()?;
    let mut n = 0;
    for dsn in &places {
        let client = crate::session::connect(dsn).await?;
        if has_table(&client).await? {
            n += dead_letter::request(&client, &pipeline, &select.selection(), action)
                .await
                .context("marking dead letters")?;
        }
    }
    let verb = match action {
        Action::Retry => "retry",
        Action::Discard => "discard",
    };
    println!(
        "marked {n} dead letter(s) to {verb}; the leader carries it out at its next flush (about a second)"
    );
    Ok(())
}

fn letter_json(l: &Stored) -> serde_json::Value {
    serde_json::json!({
        "id": l.id,
        "target": l.target,
        "key": serde_json::from_str::<serde_json::Value>(&l.key).unwrap_or(serde_json::Value::Null),
        "commit_lsn": l.commit_lsn,
        "seq": l.seq,
        "status": l.status,
        "sqlstate": l.sqlstate,
        "error": l.error,
        "action": l.action,
        "change": l.change,
    })
}
