//! The one SQLSTATE table: what a Postgres error means for the caller — retry (the
//! server or the network will recover, or a lock will be free), set one row aside (the
//! row's data is what the server refused), or stop (configuration, privileges, schema:
//! a person must act). The replication stream, the sinks and the run loop all classify
//! through it.

/// What an error calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Retry: a restart, a lost connection, a lock wait or timeout, resources.
    Transient,
    /// The row is at fault (bad value, constraint): dead-letter it, go on.
    Row,
    /// Stop and say so. Unknown codes land here: retrying an error we do not understand
    /// forever hides it from the operator.
    Fatal,
}

/// Classify a SQLSTATE.
pub fn class(code: &str) -> Class {
    match code {
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up / shutting down)
        "57P01" | "57P02" | "57P03" => Class::Transient,
        // object_in_use: the slot is still active under a walsender that has not exited yet
        "55006" => Class::Transient,
        // too_many_connections, configuration_limit_exceeded (max_wal_senders reached)
        "53300" | "53400" => Class::Transient,
        // read-only transaction on a replica that is being promoted
        "25006" => Class::Transient,
        c if is_contention(c) => Class::Transient,
        // connection_exception class
        c if c.starts_with("08") => Class::Transient,
        // insufficient_resources (disk full, out of memory) may clear up
        c if c.starts_with("53") => Class::Transient,
        // datatype_mismatch, and the data_exception / integrity_constraint_violation classes
        "42804" => Class::Row,
        c if c.starts_with("22") || c.starts_with("23") => Class::Row,
        _ => Class::Fatal,
    }
}

/// Contention: deadlock, serialization failure, a lock wait past `lock_timeout`, a
/// statement past `statement_timeout`. Transient; a batch that meets it is retried
/// smaller.
pub fn is_contention(code: &str) -> bool {
    matches!(code, "40P01" | "40001" | "55P03" | "57014")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_decide_the_class() {
        for transient in [
            "08006", "08001", "40001", "40P01", "25006", "57P01", "57P03", "55006", "55P03",
            "57014", "53300", "53100",
        ] {
            assert_eq!(class(transient), Class::Transient, "{transient}");
        }
        for row in [
            "23505", "23503", "23514", "23502", "22001", "22003", "22P02", "42804",
        ] {
            assert_eq!(class(row), Class::Row, "{row}");
        }
        for fatal in [
            "42P01", "42501", "42703", "42P10", "28P01", "3D000", "XX000", "55000", "42704",
        ] {
            assert_eq!(class(fatal), Class::Fatal, "{fatal}");
        }
        assert!(is_contention("40P01") && !is_contention("08006"));
    }
}
