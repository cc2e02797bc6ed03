//! Reading server logs: the tail quoted in errors, and what one start attempt logged —
//! which is how a start that lost its port to a parallel test is told apart and retried.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::Path;

use crate::TestkitError;

/// Start attempts before giving up on finding a port nobody else takes first.
const START_ATTEMPTS: usize = 5;

/// A port free right now on 127.0.0.1 (another process may still take it before we bind).
pub fn free_port() -> Result<u16, TestkitError> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(TestkitError::io("finding a free port"))
}

/// Run `start` with a free port; when it fails and the server's log says the address was
/// taken (a parallel test won the race for the port), try again with another port.
pub(crate) fn start_on_free_port(
    log_file: &Path,
    mut start: impl FnMut(u16) -> Result<(), TestkitError>,
) -> Result<u16, TestkitError> {
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        let log_before = log_len(log_file);
        match start(port) {
            Ok(()) => return Ok(port),
            Err(e) => {
                let port_taken = log_since(log_file, log_before).contains("Address already in use");
                if !port_taken || attempt == START_ATTEMPTS {
                    return Err(e);
                }
            }
        }
        attempt += 1;
    }
}

/// The last `lines` lines of a log, under a heading naming `path`; empty if there is none.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return String::new();
    }
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("\n--- last lines of {} ---\n{tail}", path.display())
}

/// The current length of the log at `path` (0 if there is none yet).
pub(crate) fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What was logged to `path` after byte `offset`.
pub(crate) fn log_since(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_string(&mut text);
    }
    text
}
