//! `numeric`: exact decimals kept as their canonical Postgres text, never through a float.
//!
//! Canonical means what `numeric_out` prints: an optional `-`, integer digits without
//! leading zeros (`0` if none), and exactly the value's display scale of fraction digits
//! (trailing zeros are significant: `1.50` is not `1.5`), or `NaN`, `Infinity`,
//! `-Infinity`. There is no negative zero.

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

use std::fmt::{self, Write as _};
use std::str::FromStr;

use super::{ValueError, oid};

/// `numeric_in` rejects exponents beyond this (`NUMERIC_MAX_PRECISION`).
const MAX_EXPONENT: i64 = 1000;
/// The largest display scale a numeric can have (`NUMERIC_DSCALE_MAX`).
const MAX_DSCALE: usize = 0x3FFF;

/// Sign words of the binary format (`numeric_send`).
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// An exact `numeric` value in canonical Postgres text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Numeric(String);

impl Numeric {
    /// Parses `numeric_in` input (`-12.340`, `1.5e3`, ` 7 `, `NaN`, `-inf`) into canonical form.
    pub fn parse(text: &str) -> Result<Numeric, ValueError> {
        parse_canonical(text)
            .map(Numeric)
            .map_err(|reason| ValueError::text(oid::NUMERIC, reason, text.as_bytes()))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `NaN`.
    pub fn is_nan(&self) -> bool {
        self.0 == "NaN"
    }

    /// Whether this is `Infinity` or `-Infinity`.
    pub fn is_infinite(&self) -> bool {
        self.0 == "Infinity" || self.0 == "-Infinity"
    }

    /// From the binary form (`numeric_send`): base-10000 digits with weight and scale.
    pub(super) fn from_binary(bytes: &[u8]) -> Result<Numeric, &'static str> {
        let (header, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or("shorter than its header")?;
        let [n0, n1, w0, w1, s0, s1, d0, d1] = *header;
        let ndigits = i16::from_be_bytes([n0, n1]);
        let weight = i64::from(i16::from_be_bytes([w0, w1]));
        let sign = u16::from_be_bytes([s0, s1]);
        let dscale = usize::from(u16::from_be_bytes([d0, d1]));
        let ndigits = usize::try_from(ndigits).map_err(|_| "negative digit count")?;
        if rest.len() != ndigits * 2 {
            return Err("digit count does not match the length");
        }
        let negative = match sign {
            NUMERIC_POS => false,
            NUMERIC_NEG => true,
            NUMERIC_NAN => return Ok(Numeric("NaN".into())),
            NUMERIC_PINF => return Ok(Numeric("Infinity".into())),
            NUMERIC_NINF => return Ok(Numeric("-Infinity".into())),
            _ => return Err("invalid sign"),
        };
        if dscale > MAX_DSCALE {
            return Err("invalid display scale");
        }
        let mut digits = Vec::with_capacity(ndigits);
        for pair in rest.chunks_exact(2) {
            let d = u16::from_be_bytes([
                pair.first().copied().unwrap_or(0),
                pair.get(1).copied().unwrap_or(0),
            ]);
            if d > 9999 {
                return Err("invalid base-10000 digit");
            }
            digits.push(d);
        }
        // Digit i is worth 10000^(weight - i); absent digits are zero.
        let digit = |i: i64| -> u16 {
            usize::try_from(i)
                .ok()
                .and_then(|i| digits.get(i))
                .copied()
                .unwrap_or(0)
        };
        let mut out = String::with_capacity(2 + 4 * (ndigits + 1) + dscale);
        if negative && digits.iter().any(|&d| d != 0) {
            out.push('-');
        }
        if weight < 0 {
            out.push('0');
        } else {
            for i in 0..=weight {
                // Infallible: writing to a String.
                let _ = if i == 0 {
                    write!(out, "{}", digit(i))
                } else {
                    write!(out, "{:04}", digit(i))
                };
            }
        }
        if dscale > 0 {
            out.push('.');
            let frac_start = out.len();
            let mut i = weight + 1;
            while out.len() - frac_start < dscale {
                let _ = write!(out, "{:04}", digit(i));
                i += 1;
            }
            out.truncate(frac_start + dscale);
        }
        Ok(Numeric(out))
    }
}

impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Numeric {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Numeric::parse(s)
    }
}

/// Whether `text` is already what `numeric_out` prints (the common case: it came from
/// Postgres), so it can be kept as is.
fn is_canonical(text: &str) -> bool {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return false,
        None => (unsigned, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let int_ok = int == "0" || (!int.is_empty() && !int.starts_with('0') && digits(int));
    // No negative zero: a `-` needs a nonzero digit somewhere.
    let sign_ok =
        unsigned.len() == text.len() || unsigned.bytes().any(|b| matches!(b, b'1'..=b'9'));
    int_ok && digits(frac) && sign_ok
}

fn parse_canonical(text: &str) -> Result<String, &'static str> {
    if is_canonical(text) {
        return Ok(text.to_owned());
    }
    let t = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
    let is = |word: &str| t.eq_ignore_ascii_case(word);
    if is("nan") {
        return Ok("NaN".into());
    }
    if is("infinity") || is("+infinity") || is("inf") || is("+inf") {
        return Ok("Infinity".into());
    }
    if is("-infinity") || is("-inf") {
        return Ok("-Infinity".into());
    }
    let (negative, body) = match t.as_bytes().first() {
        Some(b'-') => (true, t.get(1..).unwrap_or_default()),
        Some(b'+') => (false, t.get(1..).unwrap_or_default()),
        _ => (false, t),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (
            body.get(..at).unwrap_or_default(),
            Some(body.get(at + 1..).unwrap_or_default()),
        ),
        None => (body, None),
    };
    let (int_digits, frac_digits) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_digits) || !all_digits(frac_digits) {
        return Err("not a decimal number");
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err("no digits");
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 6 || !all_digits(digits) {
                return Err("invalid exponent");
            }
            e.parse().map_err(|_| "invalid exponent")?
        }
    };
    if !(-MAX_EXPONENT..=MAX_EXPONENT).contains(&exponent) {
        return Err("exponent out of range");
    }

    // Move the decimal point `exponent` places right over the digit string.
    let digits: Vec<u8> = int_digits.bytes().chain(frac_digits.bytes()).collect();
    let int_len = i64::try_from(int_digits.len()).map_err(|_| "too many digits")? + exponent;
    let frac_len = i64::try_from(frac_digits.len()).map_err(|_| "too many digits")? - exponent;
    let dscale = usize::try_from(frac_len.max(0)).unwrap_or(0);
    if dscale > MAX_DSCALE {
        return Err("too many fraction digits");
    }
    // Digit at position p (0 = first written digit) sits at integer index p; positions
    // outside the written digits are zeros.
    let digit_at = |p: i64| -> u8 {
        usize::try_from(p)
            .ok()
            .and_then(|p| digits.get(p))
            .copied()
            .unwrap_or(b'0')
    };
    let int_first_nonzero = (0..int_len).find(|&p| digit_at(p) != b'0');
    let mut out =
        String::with_capacity(digits.len() + 3 + usize::try_from(exponent.abs()).unwrap_or(0));
    let is_zero = digits.iter().all(|&d| d == b'0');
    if negative && !is_zero {
        out.push('-');
    }
    match int_first_nonzero {
        Some(first) => {
            for p in first..int_len {
                out.push(char::from(digit_at(p)));
            }
        }
        None => out.push('0'),
    }
    if dscale > 0 {
        out.push('.');
        for p in int_len..int_len + frac_len {
            out.push(char::from(digit_at(p)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Numeric::parse(s).unwrap().as_str().to_owned()
    }

    #[test]
    fn canonical_text_is_kept() {
        for t in [
            "0",
            "1",
            "-1",
            "12.340",
            "0.000001",
            "-0.5",
            "123456789012345678901234567890.123456789",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.00",
        ] {
            assert_eq!(canon(t), t);
        }
    }

    #[test]
    fn input_variations_become_canonical_like_numeric_in() {
        for (input, pg) in [
            ("+1.5", "1.5"),
            ("007", "7"),
            (".5", "0.5"),
            ("5.", "5"),
            ("-0", "0"),
            ("-0.000", "0.000"),
            ("1.5e3", "1500"),
            ("1.25E-1", "0.125"),
            ("1e-3", "0.001"),
            ("12.50e1", "125.0"),
            ("0e5", "0"),
            (" 42 ", "42"),
            ("nan", "NaN"),
            ("-inf", "-Infinity"),
            ("-0.0", "0.0"),
            ("00.5", "0.5"),
            ("1.", "1"),
        ] {
            assert_eq!(canon(input), pg, "{input}");
        }
        for bad in [
            "", "-", ".", "1.2.3", "1e", "1e1001", "abc", "1,5", "0x1F", "1 000",
        ] {
            assert!(Numeric::parse(bad).is_err(), "{bad}");
        }
    }

    fn binary(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&ndigits.to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn binary_form_prints_like_numeric_out() {
        let n = |b: Vec<u8>| Numeric::from_binary(&b).unwrap().0;
        // 12345.6789 = [1, 2345, 6789], weight 1, dscale 4
        assert_eq!(
            n(binary(3, 1, NUMERIC_POS, 4, &[1, 2345, 6789])),
            "12345.6789"
        );
        // -0.0012 with dscale 6 → -0.001200
        assert_eq!(n(binary(1, -1, NUMERIC_NEG, 6, &[12])), "-0.001200");
        // 10000000 = 1000 × 10000^1; the trailing zero digit is not sent.
        assert_eq!(n(binary(1, 1, NUMERIC_POS, 0, &[1000])), "10000000");
        assert_eq!(n(binary(0, 0, NUMERIC_POS, 2, &[])), "0.00");
        assert_eq!(n(binary(0, 0, NUMERIC_NEG, 0, &[])), "0");
        assert_eq!(n(binary(0, 0, NUMERIC_NAN, 0, &[])), "NaN");
        assert_eq!(n(binary(0, 0, NUMERIC_NINF, 0, &[])), "-Infinity");
        // 1.5 with dscale 1: digits [1, 5000]
        assert_eq!(n(binary(2, 0, NUMERIC_POS, 1, &[1, 5000])), "1.5");
        assert!(Numeric::from_binary(&binary(1, 0, NUMERIC_POS, 0, &[10000])).is_err());
        assert!(Numeric::from_binary(&binary(2, 0, NUMERIC_POS, 0, &[1])).is_err());
        assert!(Numeric::from_binary(&binary(-1, 0, NUMERIC_POS, 0, &[])).is_err());
        assert!(Numeric::from_binary(&binary(0, 0, 0x1234, 0, &[])).is_err());
        assert!(Numeric::from_binary(&[0, 0]).is_err());
    }
}
