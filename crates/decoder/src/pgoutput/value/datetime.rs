//! Dates, times, timestamps and intervals: Postgres's representation, its ISO text form
//! (`DateStyle=ISO`, `IntervalStyle=postgres`, `TimeZone=UTC`) and its binary form.
//!
//! Representation follows Postgres so that nothing is lost: days and microseconds since
//! 2000-01-01, the proleptic Gregorian calendar, astronomical years internally (year 0 is
//! 1 BC) and `±infinity` as distinct values. Formatting mirrors `EncodeDateOnly`,
//! `EncodeDateTime`, `EncodeTimeOnly`, `EncodeTimezone` and `EncodeInterval` of
//! `src/backend/utils/adt/datetime.c`; parsing accepts exactly what they print (plus
//! harmless variations such as other UTC offsets) and rejects what Postgres would reject.

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

use super::StackStr;

/// Room for any date, time or timestamp text form.
type Buf = StackStr<48>;

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_MINUTE: i64 = 60 * USECS_PER_SEC;
const USECS_PER_HOUR: i64 = 60 * USECS_PER_MINUTE;
const USECS_PER_DAY: i64 = 24 * USECS_PER_HOUR;

/// Days from 1970-01-01 (where the civil-date algorithm counts from) to 2000-01-01.
const UNIX_TO_PG_DAYS: i64 = 10_957;
/// The first date Postgres accepts: 4714-11-24 BC (Julian day 0).
const DATE_MIN_DAYS: i64 = -2_451_545;
/// The last date Postgres accepts: 5874897-12-31.
const DATE_MAX_DAYS: i64 = 2_145_031_948;
/// The first timestamp Postgres accepts (4714-11-24 00:00:00 BC), in µs since 2000.
const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
/// The first timestamp past Postgres's range (294277-01-01 00:00:00).
const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;
/// UTC offsets must stay within ±15:59:59 (`TZDISP_LIMIT`).
const TZ_LIMIT_SECS: i32 = 16 * 3600;

/// A `date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PgDate {
    /// `-infinity`.
    NegInfinity,
    /// Days since 2000-01-01.
    Days(i32),
    /// `infinity`.
    Infinity,
}

/// A `time` (without time zone): microseconds since midnight, `24:00:00` included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PgTime(i64);

/// A `time with time zone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeTz {
    /// The local time.
    pub time: PgTime,
    /// The UTC offset in seconds, positive east of Greenwich (`+05:30` is 19800).
    pub offset_seconds: i32,
}

/// A `timestamp` or `timestamptz` (the latter always in UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PgTimestamp {
    /// `-infinity`.
    NegInfinity,
    /// Microseconds since 2000-01-01 00:00:00 (UTC for `timestamptz`).
    Micros(i64),
    /// `infinity`.
    Infinity,
}

/// An `interval`: months, days and microseconds are kept apart, as Postgres does, because
/// their lengths vary (a month is not 30 days, a day across a DST change not 24 hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interval {
    /// Months (years are 12 months).
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Microseconds.
    pub microseconds: i64,
}

impl PgDate {
    /// The date of an astronomical `year` (0 is 1 BC), if valid and within Postgres's range.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<PgDate> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
            return None;
        }
        let days = days_from_civil(i64::from(year), month, day) - UNIX_TO_PG_DAYS;
        if !(DATE_MIN_DAYS..=DATE_MAX_DAYS).contains(&days) {
            return None;
        }
        i32::try_from(days).ok().map(PgDate::Days)
    }

    /// The astronomical year, month and day; `None` for the infinities.
    pub fn ymd(self) -> Option<(i64, u32, u32)> {
        match self {
            PgDate::Days(d) => Some(civil_from_days(i64::from(d) + UNIX_TO_PG_DAYS)),
            PgDate::NegInfinity | PgDate::Infinity => None,
        }
    }

    /// From the binary form (`date_send`): days, with `i32::MIN`/`MAX` as the infinities.
    pub(super) fn from_binary(days: i32) -> PgDate {
        match days {
            i32::MIN => PgDate::NegInfinity,
            i32::MAX => PgDate::Infinity,
            d => PgDate::Days(d),
        }
    }

    /// From ISO text: `2024-02-29`, `0044-03-15 BC`, `infinity`, `-infinity`.
    pub(super) fn parse(text: &str) -> Result<PgDate, &'static str> {
        match text {
            "infinity" => return Ok(PgDate::Infinity),
            "-infinity" => return Ok(PgDate::NegInfinity),
            _ => {}
        }
        let mut s = Scan::new(text);
        let (year, month, day) = s.ymd()?;
        let year = s.era(year)?;
        s.end()?;
        PgDate::from_ymd(year, month, day).ok_or("date out of range")
    }
}

impl fmt::Display for PgDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgDate::NegInfinity => f.write_str("-infinity"),
            PgDate::Infinity => f.write_str("infinity"),
            PgDate::Days(d) => {
                let (y, m, d) = civil_from_days(i64::from(*d) + UNIX_TO_PG_DAYS);
                let mut buf = Buf::new();
                write_ymd(&mut buf, y, m, d)?;
                bc_suffix(&mut buf, y)?;
                f.write_str(buf.as_str())
            }
        }
    }
}

impl PgTime {
    /// Midnight.
    pub const MIDNIGHT: PgTime = PgTime(0);

    /// A time from microseconds since midnight, `0..=86_400_000_000` (`24:00:00`).
    pub fn from_micros(micros: i64) -> Option<PgTime> {
        (0..=USECS_PER_DAY)
            .contains(&micros)
            .then_some(PgTime(micros))
    }

    /// Microseconds since midnight.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// From ISO text: `13:45:00`, `13:45:00.25`, `24:00:00`.
    pub(super) fn parse(text: &str) -> Result<PgTime, &'static str> {
        let mut s = Scan::new(text);
        let t = s.time_of_day()?;
        s.end()?;
        Ok(t)
    }
}

impl fmt::Display for PgTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Buf::new();
        write_time_of_day(&mut buf, self.0)?;
        f.write_str(buf.as_str())
    }
}

impl TimeTz {
    /// From the binary form (`timetz_send`): local time and the zone in seconds *west*.
    pub(super) fn from_binary(micros: i64, zone_west: i32) -> Result<TimeTz, &'static str> {
        let time = PgTime::from_micros(micros).ok_or("time of day out of range")?;
        if zone_west <= -TZ_LIMIT_SECS || zone_west >= TZ_LIMIT_SECS {
            return Err("time zone offset out of range");
        }
        Ok(TimeTz {
            time,
            offset_seconds: -zone_west,
        })
    }

    /// From ISO text: `13:45:00+05:30`, `00:00:00.5-03:00:15`.
    pub(super) fn parse(text: &str) -> Result<TimeTz, &'static str> {
        let mut s = Scan::new(text);
        let time = s.time_of_day()?;
        let offset_seconds = s.utc_offset()?;
        s.end()?;
        Ok(TimeTz {
            time,
            offset_seconds,
        })
    }
}

impl fmt::Display for TimeTz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Buf::new();
        write_time_of_day(&mut buf, self.time.0)?;
        write_utc_offset(&mut buf, self.offset_seconds)?;
        f.write_str(buf.as_str())
    }
}

impl PgTimestamp {
    /// From the binary form: µs since 2000, `i64::MIN`/`MAX` as the infinities.
    pub(super) fn from_binary(micros: i64) -> Result<PgTimestamp, &'static str> {
        match micros {
            i64::MIN => Ok(PgTimestamp::NegInfinity),
            i64::MAX => Ok(PgTimestamp::Infinity),
            us if (TIMESTAMP_MIN..TIMESTAMP_END).contains(&us) => Ok(PgTimestamp::Micros(us)),
            _ => Err("timestamp out of range"),
        }
    }

    /// From ISO text: `2024-02-29 13:45:00.5`, `0044-03-15 12:00:00 BC`; with `with_tz`,
    /// a UTC offset follows the time (`+00`, `+05:30`) and the result is converted to UTC.
    pub(super) fn parse(text: &str, with_tz: bool) -> Result<PgTimestamp, &'static str> {
        match text {
            "infinity" => return Ok(PgTimestamp::Infinity),
            "-infinity" => return Ok(PgTimestamp::NegInfinity),
            _ => {}
        }
        let mut s = Scan::new(text);
        let (year, month, day) = s.ymd()?;
        if !(s.eat(b' ') || s.eat(b'T')) {
            return Err("expected a space between date and time");
        }
        let time = s.time_of_day()?;
        let offset = if with_tz { s.utc_offset()? } else { 0 };
        let year = s.era(year)?;
        s.end()?;
        let PgDate::Days(days) = PgDate::from_ymd(year, month, day).ok_or("date out of range")?
        else {
            return Err("date out of range");
        };
        let micros = i64::from(days)
            .checked_mul(USECS_PER_DAY)
            .and_then(|us| us.checked_add(time.0))
            .and_then(|us| us.checked_sub(i64::from(offset) * USECS_PER_SEC))
            .filter(|us| (TIMESTAMP_MIN..TIMESTAMP_END).contains(us))
            .ok_or("timestamp out of range")?;
        Ok(PgTimestamp::Micros(micros))
    }

    /// The `timestamptz` text form under `TimeZone=UTC`: `2024-02-29 13:45:00+00`.
    pub fn display_utc(&self) -> impl fmt::Display + '_ {
        TimestampDisplay {
            ts: *self,
            utc: true,
        }
    }
}

impl fmt::Display for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        TimestampDisplay {
            ts: *self,
            utc: false,
        }
        .fmt(f)
    }
}

struct TimestampDisplay {
    ts: PgTimestamp,
    utc: bool,
}

impl fmt::Display for TimestampDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ts {
            PgTimestamp::NegInfinity => f.write_str("-infinity"),
            PgTimestamp::Infinity => f.write_str("infinity"),
            PgTimestamp::Micros(us) => {
                let (y, m, d) = civil_from_days(us.div_euclid(USECS_PER_DAY) + UNIX_TO_PG_DAYS);
                let mut buf = Buf::new();
                write_ymd(&mut buf, y, m, d)?;
                buf.write_char(' ')?;
                write_time_of_day(&mut buf, us.rem_euclid(USECS_PER_DAY))?;
                if self.utc {
                    buf.write_str("+00")?;
                }
                bc_suffix(&mut buf, y)?;
                f.write_str(buf.as_str())
            }
        }
    }
}

impl Interval {
    /// `infinity` (Postgres 17+): every field at its maximum.
    pub const INFINITY: Interval = Interval {
        months: i32::MAX,
        days: i32::MAX,
        microseconds: i64::MAX,
    };
    /// `-infinity` (Postgres 17+): every field at its minimum.
    pub const NEG_INFINITY: Interval = Interval {
        months: i32::MIN,
        days: i32::MIN,
        microseconds: i64::MIN,
    };

    /// From `IntervalStyle=postgres` text: `1 year 2 mons -3 days +04:05:06.789`,
    /// `-00:00:00.000001`, `00:00:00`, `infinity`.
    pub(super) fn parse(text: &str) -> Result<Interval, &'static str> {
        match text {
            "infinity" => return Ok(Interval::INFINITY),
            "-infinity" => return Ok(Interval::NEG_INFINITY),
            _ => {}
        }
        let mut months: i64 = 0;
        let mut days: i64 = 0;
        let mut micros: Option<i64> = None;
        // Bit per unit seen (year, mon, day): each may appear once.
        let mut seen: u8 = 0;
        let mut tokens = text.split(' ');
        while let Some(token) = tokens.next() {
            if micros.is_some() {
                return Err("text after the time part");
            }
            if token.contains(':') {
                micros = Some(interval_time(token)?);
                continue;
            }
            let n: i64 = token.parse().map_err(|_| "expected a number")?;
            let (bit, total, factor) = match tokens.next() {
                Some("year" | "years") => (1, &mut months, 12),
                Some("mon" | "mons") => (2, &mut months, 1),
                Some("day" | "days") => (4, &mut days, 1),
                _ => return Err("expected year(s), mon(s) or day(s)"),
            };
            if seen & bit != 0 {
                return Err("a unit appears twice");
            }
            seen |= bit;
            *total = n
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .ok_or("interval out of range")?;
        }
        if seen == 0 && micros.is_none() {
            return Err("empty interval");
        }
        // Before Postgres 17 the all-maximum interval was an ordinary value; from 17 on it
        // is `infinity`. Both texts read as the same value, which prints as `infinity`.
        Ok(Interval {
            months: i32::try_from(months).map_err(|_| "interval out of range")?,
            days: i32::try_from(days).map_err(|_| "interval out of range")?,
            microseconds: micros.unwrap_or(0),
        })
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Interval::INFINITY {
            return f.write_str("infinity");
        }
        if *self == Interval::NEG_INFINITY {
            return f.write_str("-infinity");
        }
        // `interval2itm` then `EncodeInterval`'s INTSTYLE_POSTGRES branch: each field
        // truncates toward zero, so all parts of the time share the sign of `microseconds`.
        let mut t = self.microseconds;
        let hour = t / USECS_PER_HOUR;
        t -= hour * USECS_PER_HOUR;
        let min = t / USECS_PER_MINUTE;
        t -= min * USECS_PER_MINUTE;
        let sec = t / USECS_PER_SEC;
        let fsec = t - sec * USECS_PER_SEC;

        let mut is_zero = true;
        let mut is_before = false;
        let mut part = |f: &mut fmt::Formatter<'_>, value: i64, unit: &str| -> fmt::Result {
            if value == 0 {
                return Ok(());
            }
            let space = if is_zero { "" } else { " " };
            let plus = if is_before && value > 0 { "+" } else { "" };
            let plural = if value != 1 { "s" } else { "" };
            // Each nonzero field decides whether the next positive one gets a '+'.
            is_before = value < 0;
            is_zero = false;
            write!(f, "{space}{plus}{value} {unit}{plural}")
        };
        part(f, i64::from(self.months / 12), "year")?;
        part(f, i64::from(self.months % 12), "mon")?;
        part(f, i64::from(self.days), "day")?;
        if is_zero || self.microseconds != 0 {
            let space = if is_zero { "" } else { " " };
            let sign = if self.microseconds < 0 {
                "-"
            } else if is_before {
                "+"
            } else {
                ""
            };
            write!(
                f,
                "{space}{sign}{:02}:{:02}:{:02}",
                hour.unsigned_abs(),
                min.unsigned_abs(),
                sec.unsigned_abs()
            )?;
            write_fraction(f, fsec.unsigned_abs())?;
        }
        Ok(())
    }
}

/// The `[+-]H:MM:SS[.ffffff]` part of an interval, in signed microseconds.
fn interval_time(token: &str) -> Result<i64, &'static str> {
    let mut s = Scan::new(token);
    let negative = if s.eat(b'-') {
        true
    } else {
        s.eat(b'+');
        false
    };
    let hours = s.number(1, 10).ok_or("expected hours")?;
    if !s.eat(b':') {
        return Err("expected ':' after hours");
    }
    let minutes = s
        .number(2, 2)
        .filter(|m| *m < 60)
        .ok_or("expected minutes 00-59")?;
    let (seconds, frac) = if s.eat(b':') {
        (
            s.number(2, 2)
                .filter(|v| *v < 60)
                .ok_or("expected seconds 00-59")?,
            s.fraction()?,
        )
    } else {
        (0, 0)
    };
    s.end()?;
    // i128 cannot overflow here (hours < 10^10); the range check is on the result, which
    // lets `-2562047788:00:54.775808` (i64::MIN) through.
    let abs = i128::from(hours) * i128::from(USECS_PER_HOUR)
        + i128::from(minutes * 60 + seconds) * i128::from(USECS_PER_SEC)
        + i128::from(frac);
    i64::try_from(if negative { -abs } else { abs }).map_err(|_| "interval out of range")
}

/// Whether astronomical `year` is a leap year.
fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
/// Callers pass a valid month and day; the year may be anything an `i32` holds.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01, year astronomical.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both in range by construction (1..=31, 1..=12); the conversions cannot fail.
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` with the year as Postgres prints it: at least four digits, BC years
/// counted from 1 (the caller appends ` BC`).
fn write_ymd(buf: &mut Buf, year: i64, month: u32, day: u32) -> fmt::Result {
    let shown = if year > 0 { year } else { 1 - year };
    buf.push_padded(shown.unsigned_abs(), 4)?;
    buf.write_char('-')?;
    buf.push_padded(u64::from(month), 2)?;
    buf.write_char('-')?;
    buf.push_padded(u64::from(day), 2)
}

fn bc_suffix(buf: &mut Buf, year: i64) -> fmt::Result {
    if year <= 0 {
        buf.write_str(" BC")
    } else {
        Ok(())
    }
}

/// `HH:MM:SS[.ffffff]` of microseconds since midnight, trailing fraction zeros dropped.
fn write_time_of_day(buf: &mut Buf, micros: i64) -> fmt::Result {
    let micros = micros.unsigned_abs();
    let secs = micros / 1_000_000;
    buf.push_padded(secs / 3600, 2)?;
    buf.write_char(':')?;
    buf.push_padded(secs / 60 % 60, 2)?;
    buf.write_char(':')?;
    buf.push_padded(secs % 60, 2)?;
    write_fraction(buf, micros % 1_000_000)
}

/// `.ffffff` without trailing zeros, nothing for zero (`AppendSeconds`).
fn write_fraction(f: &mut impl fmt::Write, mut micros: u64) -> fmt::Result {
    if micros == 0 {
        return Ok(());
    }
    let mut width = 6;
    while micros.is_multiple_of(10) {
        micros /= 10;
        width -= 1;
    }
    write!(f, ".{micros:0width$}")
}

/// `EncodeTimezone`: `+HH`, `+HH:MM` or `+HH:MM:SS`, minutes and seconds only when nonzero.
fn write_utc_offset(buf: &mut Buf, offset_east: i32) -> fmt::Result {
    buf.write_char(if offset_east >= 0 { '+' } else { '-' })?;
    let secs = u64::from(offset_east.unsigned_abs());
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    buf.push_padded(h, 2)?;
    if m != 0 || s != 0 {
        buf.write_char(':')?;
        buf.push_padded(m, 2)?;
    }
    if s != 0 {
        buf.write_char(':')?;
        buf.push_padded(s, 2)?;
    }
    Ok(())
}

/// A cursor for the fixed-shape text forms above.
struct Scan<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn new(s: &'a str) -> Scan<'a> {
        Scan {
            s: s.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn end(&self) -> Result<(), &'static str> {
        if self.pos == self.s.len() {
            Ok(())
        } else {
            Err("unexpected text after the value")
        }
    }

    /// A run of `min..=max` decimal digits.
    fn number(&mut self, min: usize, max: usize) -> Option<u64> {
        let digits = self
            .s
            .get(self.pos..)?
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits < min || self.peek_digit_at(digits) {
            return None;
        }
        let mut n: u64 = 0;
        for b in self.s.get(self.pos..self.pos + digits)? {
            n = n * 10 + u64::from(b - b'0');
        }
        self.pos += digits;
        Some(n)
    }

    /// Whether there is a digit `ahead` bytes on (a number longer than allowed).
    fn peek_digit_at(&self, ahead: usize) -> bool {
        self.s
            .get(self.pos + ahead)
            .is_some_and(|b| b.is_ascii_digit())
    }

    /// An optional `.f` (1 to 6 digits) as microseconds.
    fn fraction(&mut self) -> Result<i64, &'static str> {
        if !self.eat(b'.') {
            return Ok(0);
        }
        let start = self.pos;
        let digits = self
            .number(1, 6)
            .ok_or("expected 1 to 6 fractional digits")?;
        let scale = 6 - (self.pos - start);
        let digits = i64::try_from(digits).map_err(|_| "fraction out of range")?;
        Ok(digits * 10_i64.pow(u32::try_from(scale).unwrap_or(0)))
    }

    /// `Y+-MM-DD`: the year as written (BC not yet applied).
    fn ymd(&mut self) -> Result<(u64, u32, u32), &'static str> {
        let year = self.number(1, 9).ok_or("expected a year")?;
        if !self.eat(b'-') {
            return Err("expected '-' after the year");
        }
        let month = self.number(2, 2).ok_or("expected a two-digit month")?;
        if !self.eat(b'-') {
            return Err("expected '-' after the month");
        }
        let day = self.number(2, 2).ok_or("expected a two-digit day")?;
        let month = u32::try_from(month).map_err(|_| "month out of range")?;
        let day = u32::try_from(day).map_err(|_| "day out of range")?;
        Ok((year, month, day))
    }

    /// Applies an optional ` BC` to a year as written, giving the astronomical year.
    fn era(&mut self, year: u64) -> Result<i32, &'static str> {
        let bc = self.s.get(self.pos..) == Some(b" BC");
        if bc {
            self.pos += 3;
        }
        let year = i32::try_from(year)
            .ok()
            .filter(|y| *y >= 1)
            .ok_or("year out of range")?;
        Ok(if bc { 1 - year } else { year })
    }

    /// `HH:MM[:SS[.ffffff]]`, up to `24:00:00`.
    fn time_of_day(&mut self) -> Result<PgTime, &'static str> {
        let h = self.number(2, 2).ok_or("expected two-digit hours")?;
        if !self.eat(b':') {
            return Err("expected ':' after hours");
        }
        let m = self.number(2, 2).ok_or("expected two-digit minutes")?;
        let (s, frac) = if self.eat(b':') {
            (
                self.number(2, 2).ok_or("expected two-digit seconds")?,
                self.fraction()?,
            )
        } else {
            (0, 0)
        };
        if h > 24 || m > 59 || s > 59 {
            return Err("time field out of range");
        }
        let secs = i64::try_from(h * 3600 + m * 60 + s).map_err(|_| "time field out of range")?;
        PgTime::from_micros(secs * USECS_PER_SEC + frac).ok_or("time of day out of range")
    }

    /// `+HH[:MM[:SS]]` / `-…`, in seconds east of UTC, within ±15:59:59.
    fn utc_offset(&mut self) -> Result<i32, &'static str> {
        let negative = match self.peek() {
            Some(b'+') => false,
            Some(b'-') => true,
            _ => return Err("expected a UTC offset"),
        };
        self.pos += 1;
        let h = self.number(1, 2).ok_or("expected offset hours")?;
        let (mut m, mut s) = (0, 0);
        if self.eat(b':') {
            m = self.number(2, 2).ok_or("expected offset minutes")?;
            if self.eat(b':') {
                s = self.number(2, 2).ok_or("expected offset seconds")?;
            }
        }
        if m > 59 || s > 59 {
            return Err("UTC offset field out of range");
        }
        let secs = i32::try_from(h * 3600 + m * 60 + s).map_err(|_| "UTC offset out of range")?;
        if secs >= TZ_LIMIT_SECS {
            return Err("UTC offset out of range");
        }
        Ok(if negative { -secs } else { secs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_conversion_round_trips_across_eras() {
        for days in (-2_451_545..=2_145_031_948_i64)
            .step_by(9_973)
            .chain([-1, 0, 1, 59, 60])
        {
            let (y, m, d) = civil_from_days(days + UNIX_TO_PG_DAYS);
            assert_eq!(days_from_civil(y, m, d) - UNIX_TO_PG_DAYS, days);
        }
        assert_eq!(civil_from_days(UNIX_TO_PG_DAYS), (2000, 1, 1));
        assert_eq!(
            PgDate::from_ymd(0, 2, 29).and_then(PgDate::ymd),
            Some((0, 2, 29))
        );
        assert_eq!(PgDate::from_ymd(1900, 2, 29), None);
    }

    #[test]
    fn dates_print_like_postgres() {
        for t in [
            "2000-01-01",
            "1999-12-31",
            "0001-01-01",
            "0001-12-31 BC",
            "4714-11-24 BC",
            "5874897-12-31",
            "10000-01-01",
            "infinity",
            "-infinity",
        ] {
            assert_eq!(PgDate::parse(t).unwrap().to_string(), t);
        }
        assert_eq!(PgDate::parse("2000-01-02"), Ok(PgDate::Days(1)));
        for bad in [
            "4714-11-23 BC",
            "5874898-01-01",
            "2001-02-29",
            "0000-01-01",
            "2000-1-01",
            "2000-01-01 ",
            "2000-01-01 AD",
            "20000101",
        ] {
            assert!(PgDate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_print_like_postgres() {
        for t in [
            "00:00:00",
            "23:59:59.999999",
            "12:00:00.5",
            "24:00:00",
            "01:02:03.000001",
        ] {
            assert_eq!(PgTime::parse(t).unwrap().to_string(), t);
        }
        for bad in [
            "24:00:01",
            "12:60:00",
            "1:00:00",
            "12:00:00.1234567",
            "12:00:00.",
        ] {
            assert!(PgTime::parse(bad).is_err(), "{bad}");
        }
        for t in [
            "12:00:00+05:30",
            "12:00:00-03:00:15",
            "00:00:00.25+00",
            "23:59:59-15:59:59",
        ] {
            assert_eq!(TimeTz::parse(t).unwrap().to_string(), t);
        }
        assert_eq!(
            TimeTz::parse("12:00:00+05:30").unwrap().offset_seconds,
            19_800
        );
        assert!(TimeTz::parse("12:00:00+16").is_err());
    }

    #[test]
    fn timestamps_print_like_postgres() {
        for t in [
            "2000-01-01 00:00:00",
            "1970-01-01 00:00:00.123",
            "0044-03-15 12:00:00 BC",
            "294276-12-31 23:59:59.999999",
            "4714-11-24 00:00:00 BC",
        ] {
            assert_eq!(PgTimestamp::parse(t, false).unwrap().to_string(), t);
        }
        for t in [
            "2024-02-29 13:45:00+00",
            "0044-03-15 12:00:00+00 BC",
            "infinity",
        ] {
            assert_eq!(
                PgTimestamp::parse(t, true)
                    .unwrap()
                    .display_utc()
                    .to_string(),
                t
            );
        }
        assert_eq!(
            PgTimestamp::parse("2000-01-01 05:30:00+05:30", true),
            Ok(PgTimestamp::Micros(0))
        );
        assert_eq!(
            PgTimestamp::parse("2000-01-01 00:00:00-03:00:15", true),
            Ok(PgTimestamp::Micros(10_815_000_000))
        );
        assert!(PgTimestamp::parse("294277-01-01 00:00:00", false).is_err());
        assert!(PgTimestamp::parse("2000-01-01 00:00:00", true).is_err());
    }

    #[test]
    fn intervals_print_like_postgres() {
        for t in [
            "00:00:00",
            "1 year 2 mons -3 days +04:05:06.789",
            "-00:00:00.000001",
            "-1 years -2 mons",
            "1 mon",
            "1 day",
            "-1 days +00:00:01",
            "3 days 04:00:00",
            "-2562047788:00:54.775808",
            "2562047788:00:54.775807",
            "178956970 years 7 mons 2147483647 days",
            "-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807",
            "infinity",
            "-infinity",
        ] {
            assert_eq!(Interval::parse(t).unwrap().to_string(), t);
        }
        assert_eq!(
            Interval::parse("1 year 2 mons -3 days +04:05:06.789"),
            Ok(Interval {
                months: 14,
                days: -3,
                microseconds: 14_706_789_000
            })
        );
        // Postgres 15's largest interval is Postgres 17's `infinity`.
        assert_eq!(
            Interval::parse("178956970 years 7 mons 2147483647 days 2562047788:00:54.775807"),
            Ok(Interval::INFINITY)
        );
        for bad in [
            "",
            "1",
            "1 fortnight",
            "1 day 1 day",
            "00:00:00 1 day",
            "1:2:3",
            "00:60:00",
            "2562047789:00:00",
        ] {
            assert!(Interval::parse(bad).is_err(), "{bad}");
        }
    }
}
