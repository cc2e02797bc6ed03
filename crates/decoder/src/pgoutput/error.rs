//! Why a `pgoutput` message could not be decoded, and where.
//!
//! An error names the message (by tag), the absolute byte offset in that message where
//! decoding stopped, and a [`DecodeErrorKind`] a caller can match on. Every kind is
//! definite: the same bytes fail the same way on every retry.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use std::fmt;

use super::messages::RelId;
use super::value::ValueError;

/// A `pgoutput` message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// Byte offset in the message where decoding stopped (0 is the tag byte).
    pub offset: usize,
    /// The message's tag byte, if there was one.
    pub tag: Option<u8>,
}

impl DecodeError {
    /// An error of `kind` at `offset`, its message not yet known.
    pub fn new(kind: DecodeErrorKind, offset: usize) -> DecodeError {
        DecodeError {
            kind,
            offset,
            tag: None,
        }
    }

    /// The same error, attributed to the message with `tag`.
    pub fn with_tag(mut self, tag: u8) -> DecodeError {
        self.tag = Some(tag);
        self
    }
}

/// What was wrong with a message. Matching should keep a wildcard arm: kinds may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The message had no bytes at all.
    Empty,
    /// The message ended in the middle of a field.
    UnexpectedEof {
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A length or count field was negative or impossible.
    InvalidLength(i64),
    /// The first byte is not a `pgoutput` message tag.
    UnknownTag(u8),
    /// A tuple column kind other than `n`, `u`, `t` or `b`.
    UnknownTupleKind(u8),
    /// A tuple marker other than `K`, `O` or `N` where one was expected.
    UnknownOldTupleKind(u8),
    /// A replica identity other than `d`, `n`, `f` or `i`.
    UnknownReplicaIdentity(u8),
    /// A string that is not UTF-8.
    InvalidUtf8,
    /// A string without its terminating NUL byte.
    MissingNul,
    /// A row change for a relation whose Relation message was not seen in this session.
    UnknownRelation(RelId),
    /// A row with a different number of columns than its relation.
    ColumnCountMismatch {
        /// The relation.
        rel_id: RelId,
        /// Columns of the cached Relation message.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
    /// Bytes left over after a complete message.
    TrailingBytes(usize),
    /// A streaming message out of place (Stream Start inside a block, Stream Stop outside).
    StreamStateViolation(&'static str),
    /// A message that the negotiated protocol version does not have.
    UnsupportedMessageForVersion {
        /// The message's tag.
        tag: u8,
        /// The decoder's protocol version.
        version: u32,
    },
    /// A protocol version this decoder does not speak (it speaks 1 to 4).
    UnsupportedVersion(u32),
    /// A column value that its type rejects (from the typed conversion helpers).
    InvalidValue {
        /// The column's name.
        column: String,
        /// Why the value was rejected.
        error: ValueError,
    },
}

/// The name Postgres's documentation gives the message with `tag`.
pub(super) fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => return None,
    })
}

/// The first protocol version that has the message with `tag`.
pub(super) fn min_version(tag: u8) -> u32 {
    match tag {
        b'S' | b'E' | b'c' | b'A' => 2,
        b'b' | b'P' | b'K' | b'r' | b'p' => 3,
        _ => 1,
    }
}

/// A byte shown as `'x'` when printable, else as `0x1f`.
struct ByteChar(u8);

impl fmt::Display for ByteChar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

impl DecodeErrorKind {
    /// Writes the description, with " at byte N" where it reads best when `offset` is set.
    fn describe(&self, f: &mut fmt::Formatter<'_>, offset: Option<usize>) -> fmt::Result {
        let at = |f: &mut fmt::Formatter<'_>| match offset {
            Some(o) => write!(f, " at byte {o}"),
            None => Ok(()),
        };
        match self {
            DecodeErrorKind::Empty => {
                f.write_str("empty message")?;
                at(f)
            }
            DecodeErrorKind::UnexpectedEof { needed, available } => {
                f.write_str("unexpected end of input")?;
                at(f)?;
                write!(f, " (needed {needed} bytes, {available} left)")
            }
            DecodeErrorKind::InvalidLength(n) => {
                write!(f, "invalid length {n}")?;
                at(f)
            }
            DecodeErrorKind::UnknownTag(t) => {
                write!(f, "unknown message tag {}", ByteChar(*t))?;
                at(f)
            }
            DecodeErrorKind::UnknownTupleKind(k) => {
                write!(f, "unknown tuple column kind {}", ByteChar(*k))?;
                at(f)?;
                f.write_str(" (expected 'n', 'u', 't' or 'b')")
            }
            DecodeErrorKind::UnknownOldTupleKind(k) => {
                write!(f, "unexpected tuple marker {}", ByteChar(*k))?;
                at(f)?;
                f.write_str(" (expected 'K', 'O' or 'N')")
            }
            DecodeErrorKind::UnknownReplicaIdentity(r) => {
                write!(f, "unknown replica identity {}", ByteChar(*r))?;
                at(f)?;
                f.write_str(" (expected 'd', 'n', 'f' or 'i')")
            }
            DecodeErrorKind::InvalidUtf8 => {
                f.write_str("string is not valid UTF-8")?;
                at(f)
            }
            DecodeErrorKind::MissingNul => {
                f.write_str("string has no terminating NUL")?;
                at(f)
            }
            DecodeErrorKind::UnknownRelation(id) => {
                write!(f, "change for unknown relation {id}")?;
                at(f)?;
                f.write_str(" (no Relation message for it in this session)")
            }
            DecodeErrorKind::ColumnCountMismatch {
                rel_id,
                expected,
                got,
            } => {
                write!(f, "tuple has {got} columns")?;
                at(f)?;
                write!(f, " but relation {rel_id} has {expected}")
            }
            DecodeErrorKind::TrailingBytes(n) => {
                write!(f, "{n} trailing bytes after a complete message")?;
                at(f)
            }
            DecodeErrorKind::StreamStateViolation(what) => {
                f.write_str(what)?;
                at(f)
            }
            DecodeErrorKind::UnsupportedMessageForVersion { tag, version } => {
                write!(
                    f,
                    "message {} needs protocol version {} or later, the session uses {version}",
                    ByteChar(*tag),
                    min_version(*tag)
                )
            }
            DecodeErrorKind::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported protocol version {v} (this decoder speaks 1 to 4)"
                )
            }
            DecodeErrorKind::InvalidValue { column, error } => {
                write!(f, "column {column:?}: {error}")
            }
        }
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.describe(f, None)
    }
}

impl std::error::Error for DecodeErrorKind {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeErrorKind::InvalidValue { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tag {
            Some(tag) => match message_name(tag) {
                Some(name) => write!(f, "pgoutput {name} ({}) message: ", ByteChar(tag))?,
                None => f.write_str("pgoutput message: ")?,
            },
            None => f.write_str("pgoutput message: ")?,
        }
        self.kind.describe(f, Some(self.offset))
    }
}

impl std::error::Error for DecodeError {
    // The kind's text is already part of ours; its cause is the next link in the chain.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_message_offset_and_sizes() {
        let e = DecodeError::new(
            DecodeErrorKind::UnexpectedEof {
                needed: 4,
                available: 2,
            },
            17,
        )
        .with_tag(b'I');
        assert_eq!(
            e.to_string(),
            "pgoutput Insert ('I') message: unexpected end of input at byte 17 (needed 4 bytes, 2 left)"
        );
    }

    #[test]
    fn display_without_known_tag() {
        let e = DecodeError::new(DecodeErrorKind::UnknownTag(0x01), 0).with_tag(0x01);
        assert_eq!(
            e.to_string(),
            "pgoutput message: unknown message tag 0x01 at byte 0"
        );
        let e = DecodeError::new(DecodeErrorKind::Empty, 0);
        assert_eq!(e.to_string(), "pgoutput message: empty message at byte 0");
    }

    #[test]
    fn version_error_says_which_version_is_needed() {
        let e = DecodeError::new(
            DecodeErrorKind::UnsupportedMessageForVersion {
                tag: b'b',
                version: 2,
            },
            0,
        )
        .with_tag(b'b');
        assert_eq!(
            e.to_string(),
            "pgoutput Begin Prepare ('b') message: message 'b' needs protocol version 3 or later, \
             the session uses 2"
        );
    }
}
