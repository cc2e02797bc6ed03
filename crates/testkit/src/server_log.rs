//! Reading server logs: the tail quoted in errors, and what one start attempt logged.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

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
