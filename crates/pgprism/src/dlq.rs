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
use pgprism_decoder::stream::SourceDsn;
use pgprism_sink::dead_letter::{self, Action, Selection, Stored};
use tokio_postgres::NoTls;

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
    /// The database holding the dead letters: the Postgres sink (Postgres targets) or the
    /// source (Redis targets).
    #[arg(long, env = "PGPRISM_DLQ_DSN")]
    dsn: String,
    /// The pipeline.
    #[arg(long, default_value = "pgprism")]
    pipeline: String,
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

    async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let dsn = SourceDsn::parse(&self.dsn)?;
        let (client, conn) = dsn.sql_config().connect(NoTls).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to Postgres at {}: {}",
                dsn.target(),
                pgprism_decoder::stream::pg_error_text(&e)
            )
        })?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// Run `pgprism dlq`.
pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List { select, json } => {
            let client = select.client().await?;
            let letters = dead_letter::list(&client, &select.pipeline, &select.selection())
                .await
                .context("listing dead letters")?;
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
    let client = select.client().await?;
    let n = dead_letter::request(&client, &select.pipeline, &select.selection(), action)
        .await
        .context("marking dead letters")?;
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
