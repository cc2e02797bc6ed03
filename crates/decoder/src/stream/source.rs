//! The names we put into replication commands: checked before they are used (the DSN
//! and quoting live in `pgprism-pg`).

use super::error::StreamError;

/// Postgres allows slot names of lower-case letters, digits and `_`, at most 63 bytes;
/// we check before putting one into a replication command.
pub fn validate_slot_name(name: &str) -> Result<(), StreamError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StreamError::Config(format!(
            "invalid slot name {name:?}: use 1 to 63 lower-case letters, digits and underscores"
        )));
    }
    Ok(())
}

/// Validate a publication name (any identifier without NUL, at most 63 bytes).
pub fn validate_publication_name(name: &str) -> Result<(), StreamError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(StreamError::Config(format!(
            "invalid publication name {name:?}: use 1 to 63 bytes, no NUL"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("pgprism_1").is_ok());
        for bad in ["", "Upper", "with space", "semi;colon", &"x".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad}");
        }
    }
}
