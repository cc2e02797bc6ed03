//! Plain SQL sessions to a Postgres server, for the commands and the run loop's side tasks.

use pgprism_pg::{Dsn, error_text};
use tokio_postgres::Client;

/// Connect; the error names the server (never the password).
pub async fn connect(dsn: &Dsn) -> anyhow::Result<Client> {
    let (client, _connection) = pgprism_pg::connect(dsn).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to Postgres at {}: {}",
            dsn.target(),
            error_text(&e)
        )
    })?;
    Ok(client)
}

/// For a loop that runs on: the session in `slot`, reconnected if it is gone; `None`
/// while the server cannot be reached (the next round tries again).
pub async fn keep<'a>(slot: &'a mut Option<Client>, dsn: &Dsn) -> Option<&'a Client> {
    if slot.as_ref().is_none_or(Client::is_closed) {
        *slot = connect(dsn).await.ok();
    }
    slot.as_ref()
}
