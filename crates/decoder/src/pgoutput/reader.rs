//! A bounds-checked cursor over one message's bytes: big-endian integers, C strings and
//! length-prefixed slices, each read failing with the absolute offset instead of panicking.
//!
//! Slices come back as [`Bytes`] views of the input (`Bytes::slice`), so tuple values
//! cost a reference-count bump, not a copy.

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

use bytes::Bytes;

use super::error::{DecodeError, DecodeErrorKind};

/// A read position in one message.
pub(super) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    pub(super) fn new(buf: &'a Bytes) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// The absolute offset of the next byte to read.
    pub(super) fn offset(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// An error of `kind` at the current offset.
    pub(super) fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(kind, self.pos)
    }

    /// The next `N` bytes, advancing past them.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let chunk = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or_else(|| self.eof(N))?;
        self.pos += N;
        Ok(*chunk)
    }

    fn eof(&self, needed: usize) -> DecodeError {
        self.error(DecodeErrorKind::UnexpectedEof {
            needed,
            available: self.remaining(),
        })
    }

    /// `Byte1` / `Int8`.
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// `Int16`, read unsigned as Postgres does for column counts (`pq_getmsgint(.., 2)`).
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// `Int32`, signed.
    pub(super) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// `Int32` holding an OID or xid (unsigned on the Postgres side).
    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// `Int64`, signed (timestamps).
    pub(super) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// `Int64` holding an LSN.
    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// `String`: NUL-terminated UTF-8. The error offset is where the string starts.
    pub(super) fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error(DecodeErrorKind::MissingNul))?;
        let s = rest
            .get(..nul)
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .ok_or_else(|| self.error(DecodeErrorKind::InvalidUtf8))?;
        let s = s.to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    /// The next `len` bytes as a zero-copy view of the input.
    pub(super) fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(self.eof(len));
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// An `Int32` length followed by that many bytes; a negative length is an error.
    pub(super) fn len_prefixed(&mut self) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let len = self.i32()?;
        let len = usize::try_from(len)
            .map_err(|_| DecodeError::new(DecodeErrorKind::InvalidLength(i64::from(len)), at))?;
        if len > self.remaining() {
            // Report the length field, not the short payload: the length is what is wrong
            // when it claims more than the whole message holds.
            return Err(DecodeError::new(
                DecodeErrorKind::UnexpectedEof {
                    needed: len,
                    available: self.remaining(),
                },
                at,
            ));
        }
        self.bytes(len)
    }

    /// Succeeds only if every byte was consumed.
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error(DecodeErrorKind::TrailingBytes(n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_integers_in_order() {
        let buf = Bytes::from_static(&[1, 0xff, 0xfe, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]);
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 0xfffe);
        assert_eq!(r.u32().unwrap(), 3);
        assert_eq!(r.i32().unwrap(), -1);
        assert_eq!(r.offset(), 11);
        r.finish().unwrap();
    }

    #[test]
    fn short_read_reports_offset_and_sizes() {
        let buf = Bytes::from_static(&[0, 0, 0, 0, 0, 1, 2]);
        let mut r = Reader::new(&buf);
        r.u32().unwrap();
        let err = r.i64().unwrap_err();
        assert_eq!(err.offset, 4);
        assert_eq!(
            err.kind,
            DecodeErrorKind::UnexpectedEof {
                needed: 8,
                available: 3
            }
        );
        // A failed read does not move the cursor.
        assert_eq!(r.offset(), 4);
    }

    #[test]
    fn cstr_needs_nul_and_utf8() {
        let buf = Bytes::from_static(b"ab\0c");
        let mut r = Reader::new(&buf);
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.cstr().unwrap_err().kind, DecodeErrorKind::MissingNul);

        let buf = Bytes::from_static(b"\xff\0");
        assert_eq!(
            Reader::new(&buf).cstr().unwrap_err().kind,
            DecodeErrorKind::InvalidUtf8
        );
    }

    #[test]
    fn length_prefixed_slices_share_the_buffer() {
        let buf = Bytes::from_static(&[0, 0, 0, 2, b'h', b'i', 0]);
        let mut r = Reader::new(&buf);
        let s = r.len_prefixed().unwrap();
        assert_eq!(&s[..], b"hi");
        assert_eq!(s.as_ptr(), buf[4..].as_ptr());
        assert_eq!(
            r.finish().unwrap_err().kind,
            DecodeErrorKind::TrailingBytes(1)
        );
    }

    #[test]
    fn negative_and_oversized_lengths_are_errors() {
        let buf = Bytes::from_static(&[0xff, 0xff, 0xff, 0xfe]);
        let err = Reader::new(&buf).len_prefixed().unwrap_err();
        assert_eq!(
            (err.kind, err.offset),
            (DecodeErrorKind::InvalidLength(-2), 0)
        );

        let buf = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 1]);
        let err = Reader::new(&buf).len_prefixed().unwrap_err();
        assert_eq!(
            err.kind,
            DecodeErrorKind::UnexpectedEof {
                needed: i32::MAX as usize,
                available: 1
            }
        );
    }
}
