//! Arrays of the builtin types: Postgres's array text syntax (`array_in` / `array_out`)
//! and binary format (`array_recv`).
//!
//! Text: `{1,2,3}`, `{{1,2},{3,4}}`, `{"a b",NULL,"\"q\""}`, and a dimension decoration
//! when any lower bound is not 1: `[0:2]={1,2,3}`. `array_out` quotes an element that is
//! empty, spells `NULL` in any case, or contains `{`, `}`, `,`, `"`, `\` or whitespace,
//! escaping `"` and `\` with a backslash. Whitespace is `array_isspace`'s set (space,
//! `\t`, `\n`, `\r`, `\v`, `\f`), the same set `array_in` trims around unquoted elements.

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

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use super::Value;

/// Postgres's limit on array dimensions (`MAXDIM`).
const MAX_DIMS: usize = 6;

/// An array value: its dimensions and its elements in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayValue {
    /// The element type's OID.
    pub element_type: u32,
    /// `(lower bound, length)` per dimension, outermost first; empty for `{}`.
    pub dims: Vec<(i32, usize)>,
    /// Elements in row-major order ([`Value::Null`] for NULL elements).
    pub elements: Vec<Value>,
}

impl ArrayValue {
    /// Number of dimensions (0 for the empty array).
    pub fn ndim(&self) -> usize {
        self.dims.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Whether `dims` describe `elements` (and within Postgres's dimension limit).
    fn is_consistent(&self) -> bool {
        let total = self
            .dims
            .iter()
            .try_fold(1usize, |acc, (_, len)| acc.checked_mul(*len));
        match self.dims.len() {
            0 => self.elements.is_empty(),
            n if n > MAX_DIMS => false,
            _ => total == Some(self.elements.len()),
        }
    }

    /// From `array_out` text; elements are parsed as `element_type`.
    pub(super) fn parse_text(
        element_type: u32,
        text: &[u8],
    ) -> Result<ArrayValue, Cow<'static, str>> {
        let mut p = TextParser {
            s: text,
            pos: 0,
            element_type,
            ndim: None,
            lens: Vec::new(),
            elements: Vec::new(),
            scratch: Vec::new(),
        };
        p.skip_space();
        let decoration = if p.peek() == Some(b'[') {
            let d = p.decoration()?;
            p.skip_space();
            if !p.eat(b'=') {
                return Err("expected '=' after the array dimensions".into());
            }
            p.skip_space();
            Some(d)
        } else {
            None
        };
        if !p.eat(b'{') {
            return Err("array text must start with '{' or dimensions".into());
        }
        p.level(0)?;
        p.skip_space();
        if p.pos != p.s.len() {
            return Err("junk after the closing '}'".into());
        }
        let lens: Vec<usize> = p.lens.into_iter().map(|n| n.unwrap_or(0)).collect();
        let dims = match decoration {
            None => lens.iter().map(|&len| (1, len)).collect(),
            Some(bounds) => {
                if bounds.len() != lens.len() {
                    return Err("dimensions do not match the array contents".into());
                }
                let mut dims = Vec::with_capacity(lens.len());
                for (&(lb, ub), &len) in bounds.iter().zip(&lens) {
                    if i64::from(ub) - i64::from(lb) + 1 != i64::try_from(len).unwrap_or(-1) {
                        return Err("dimensions do not match the array contents".into());
                    }
                    dims.push((lb, len));
                }
                dims
            }
        };
        Ok(ArrayValue {
            element_type,
            dims,
            elements: p.elements,
        })
    }

    /// From `array_send`'s binary form, whose element type must be `element_type`.
    pub(super) fn parse_binary(
        element_type: u32,
        bytes: &[u8],
    ) -> Result<ArrayValue, Cow<'static, str>> {
        let mut b = BinReader { s: bytes };
        let ndim = b.i32()?;
        let flags = b.i32()?;
        let elem = b.i32()?.cast_unsigned();
        let ndim = usize::try_from(ndim)
            .ok()
            .filter(|n| *n <= MAX_DIMS)
            .ok_or("invalid number of dimensions")?;
        if flags != 0 && flags != 1 {
            return Err("invalid array flags".into());
        }
        if elem != element_type {
            return Err(format!("element type {elem} where {element_type} was expected").into());
        }
        let mut dims = Vec::with_capacity(ndim);
        let mut total: usize = 1;
        for _ in 0..ndim {
            let len = b.i32()?;
            let lb = b.i32()?;
            let len_u = usize::try_from(len).map_err(|_| "negative dimension length")?;
            if lb.checked_add(len).is_none() {
                return Err("array upper bound out of range".into());
            }
            total = total.checked_mul(len_u).ok_or("array too large")?;
            dims.push((lb, len_u));
        }
        if ndim == 0 || total == 0 {
            // Postgres stores every empty array as zero-dimensional.
            return if b.s.is_empty() {
                Ok(ArrayValue {
                    element_type,
                    dims: Vec::new(),
                    elements: Vec::new(),
                })
            } else {
                Err("bytes after an empty array".into())
            };
        }
        // Each element takes at least its 4-byte length, which bounds the allocation.
        if total > b.s.len() / 4 {
            return Err("more elements than the data holds".into());
        }
        let mut elements = Vec::with_capacity(total);
        for i in 0..total {
            let len = b.i32()?;
            let value = if len == -1 {
                Value::Null
            } else {
                let len = usize::try_from(len).map_err(|_| "invalid element length")?;
                let data = b.take(len)?;
                Value::from_binary(element_type, data)
                    .map_err(|e| format!("element {}: {}", i + 1, e.reason))?
            };
            elements.push(value);
        }
        if !b.s.is_empty() {
            return Err("bytes after the last element".into());
        }
        Ok(ArrayValue {
            element_type,
            dims,
            elements,
        })
    }
}

impl fmt::Display for ArrayValue {
    /// `array_out`'s text. Dimensions that do not describe the elements (possible only for
    /// hand-built values) are ignored and the elements printed as one dimension.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut scratch = String::new();
        let mut elements = self.elements.iter();
        if !self.is_consistent() {
            return write_level(f, &[(1, self.elements.len())], &mut elements, &mut scratch);
        }
        if self.dims.is_empty() {
            return f.write_str("{}");
        }
        if self.dims.iter().any(|(lb, _)| *lb != 1) {
            for (lb, len) in &self.dims {
                let ub = i64::from(*lb) + i64::try_from(*len).unwrap_or(i64::MAX) - 1;
                write!(f, "[{lb}:{ub}]")?;
            }
            f.write_char('=')?;
        }
        write_level(f, &self.dims, &mut elements, &mut scratch)
    }
}

fn write_level<'v>(
    f: &mut fmt::Formatter<'_>,
    dims: &[(i32, usize)],
    elements: &mut impl Iterator<Item = &'v Value>,
    scratch: &mut String,
) -> fmt::Result {
    let Some(((_, len), inner)) = dims.split_first() else {
        return Ok(());
    };
    f.write_char('{')?;
    for i in 0..*len {
        if i > 0 {
            f.write_char(',')?;
        }
        if inner.is_empty() {
            match elements.next() {
                None | Some(Value::Null) => f.write_str("NULL")?,
                Some(v) => {
                    scratch.clear();
                    write!(scratch, "{v}")?;
                    write_element(f, scratch)?;
                }
            }
        } else {
            write_level(f, inner, elements, scratch)?;
        }
    }
    f.write_char('}')
}

/// An element's text, quoted and escaped where `array_out` would.
fn write_element(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("NULL")
        || text
            .bytes()
            .any(|b| matches!(b, b'{' | b'}' | b',' | b'"' | b'\\') || is_array_space(b));
    if !needs_quotes {
        return f.write_str(text);
    }
    f.write_char('"')?;
    let mut rest = text;
    while let Some(at) = rest.find(['"', '\\']) {
        let (plain, special) = rest.split_at(at);
        f.write_str(plain)?;
        f.write_char('\\')?;
        let mut chars = special.chars();
        if let Some(c) = chars.next() {
            f.write_char(c)?;
        }
        rest = chars.as_str();
    }
    f.write_str(rest)?;
    f.write_char('"')
}

/// `array_isspace`: what `array_in` skips around elements, so what `array_out` quotes.
fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

struct TextParser<'a> {
    s: &'a [u8],
    pos: usize,
    element_type: u32,
    /// Fixed by the first element: its nesting depth.
    ndim: Option<usize>,
    /// Length of every sub-array at each depth (they must agree).
    lens: Vec<Option<usize>>,
    elements: Vec<Value>,
    scratch: Vec<u8>,
}

impl TextParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek();
        if b.is_some() {
            self.pos += 1;
        }
        b
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_array_space) {
            self.pos += 1;
        }
    }

    fn int(&mut self) -> Result<i32, Cow<'static, str>> {
        let start = self.pos;
        if self.peek() == Some(b'-') || self.peek() == Some(b'+') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.s
            .get(start..self.pos)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| "invalid array dimension".into())
    }

    /// `[lb:ub][ub]…` as `(lower, upper)` per dimension.
    fn decoration(&mut self) -> Result<Vec<(i32, i32)>, Cow<'static, str>> {
        let mut bounds = Vec::new();
        while self.eat(b'[') {
            if bounds.len() == MAX_DIMS {
                return Err("too many array dimensions".into());
            }
            self.skip_space();
            let first = self.int()?;
            self.skip_space();
            let (lb, ub) = if self.eat(b':') {
                self.skip_space();
                let ub = self.int()?;
                self.skip_space();
                (first, ub)
            } else {
                (1, first)
            };
            if !self.eat(b']') {
                return Err("expected ']' in array dimensions".into());
            }
            if ub < lb {
                return Err("array upper bound below lower bound".into());
            }
            bounds.push((lb, ub));
        }
        Ok(bounds)
    }

    /// One `{…}` at `depth`, its `{` already consumed.
    fn level(&mut self, depth: usize) -> Result<(), Cow<'static, str>> {
        self.skip_space();
        if self.eat(b'}') {
            return if depth == 0 {
                Ok(())
            } else {
                Err("empty sub-array".into())
            };
        }
        let mut count = 0usize;
        loop {
            self.skip_space();
            if self.eat(b'{') {
                if depth + 1 >= MAX_DIMS || self.ndim.is_some_and(|n| depth + 1 >= n) {
                    return Err("unexpected '{' (sub-arrays nested unevenly or too deep)".into());
                }
                self.level(depth + 1)?;
            } else {
                match self.ndim {
                    None => self.ndim = Some(depth + 1),
                    Some(n) if n != depth + 1 => {
                        return Err("element where a sub-array was expected".into());
                    }
                    Some(_) => {}
                }
                self.element()?;
            }
            count += 1;
            self.skip_space();
            match self.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err("expected ',' or '}' after an array element".into()),
            }
        }
        // Inner levels close first, so slots for outer depths may not exist yet.
        if self.lens.len() <= depth {
            self.lens.resize(depth + 1, None);
        }
        match self.lens.get_mut(depth) {
            Some(slot @ None) => *slot = Some(count),
            Some(Some(n)) if *n != count => {
                return Err("sub-arrays of different lengths".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// One element, quoted or not, leading whitespace already skipped.
    fn element(&mut self) -> Result<(), Cow<'static, str>> {
        self.scratch.clear();
        let mut maybe_null = true;
        if self.eat(b'"') {
            maybe_null = false;
            loop {
                match self.next() {
                    None => return Err("unterminated quoted array element".into()),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        let c = self.next().ok_or("array text ends after a backslash")?;
                        self.scratch.push(c);
                    }
                    Some(c) => self.scratch.push(c),
                }
            }
        } else {
            // Trailing whitespace is not part of an unquoted element, unless escaped.
            let mut keep = 0;
            loop {
                match self.peek() {
                    None => return Err("array text ends inside an element".into()),
                    Some(b',' | b'}') => break,
                    Some(b'{' | b'"') => {
                        return Err("unexpected character in an array element".into());
                    }
                    Some(b'\\') => {
                        self.pos += 1;
                        let c = self.next().ok_or("array text ends after a backslash")?;
                        self.scratch.push(c);
                        keep = self.scratch.len();
                        maybe_null = false;
                    }
                    Some(c) => {
                        self.pos += 1;
                        self.scratch.push(c);
                        if !is_array_space(c) {
                            keep = self.scratch.len();
                        }
                    }
                }
            }
            self.scratch.truncate(keep);
            if self.scratch.is_empty() {
                return Err("empty unquoted array element".into());
            }
        }
        let value = if maybe_null && self.scratch.eq_ignore_ascii_case(b"NULL") {
            Value::Null
        } else {
            Value::from_text(self.element_type, &self.scratch)
                .map_err(|e| format!("element {}: {}", self.elements.len() + 1, e.reason))?
        };
        self.elements.push(value);
        Ok(())
    }
}

struct BinReader<'a> {
    s: &'a [u8],
}

impl<'a> BinReader<'a> {
    fn i32(&mut self) -> Result<i32, Cow<'static, str>> {
        let (head, rest) = self
            .s
            .split_first_chunk::<4>()
            .ok_or("array data ends early")?;
        self.s = rest;
        Ok(i32::from_be_bytes(*head))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Cow<'static, str>> {
        let (head, rest) = self
            .s
            .split_at_checked(n)
            .ok_or("array element ends early")?;
        self.s = rest;
        Ok(head)
    }
}
