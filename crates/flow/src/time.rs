//! Wall-clock time as flows carry it: nanoseconds since the Unix epoch,
//! written as RFC 3339 in UTC the way protobuf JSON writes a Timestamp
//! (0, 3, 6 or 9 fractional digits), read from any RFC 3339 form.
//!
//! Hand-written because the conversions are small and exact (civil-from-
//! days and back), and a date library would be the crate's largest
//! dependency for two functions.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

/// A time that is not RFC 3339, or a duration that is not `1h30m` and such.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither an RFC 3339 time (2026-12-03T07:00:00Z) nor a duration (90s, 5m, 1h30m)")]
pub struct TimeError(pub String);

impl Timestamp {
    /// From nanoseconds since the epoch.
    pub const fn from_nanos(ns: u64) -> Self {
        Self(ns)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// True for the zero value (no time).
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }

    /// `Dec  3 07:42:40.123` (UTC), as `hubble observe` prints times.
    pub fn stamp_milli(self) -> String {
        let c = Civil::of(self.0);
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let month = MONTHS[usize::try_from(c.month - 1).unwrap_or(0).min(11)];
        format!("{month} {:>2} {:02}:{:02}:{:02}.{:03}", c.day, c.hour, c.minute, c.second, c.nanos / 1_000_000)
    }

    /// Parses RFC 3339 (`2026-12-03T07:42:40.123Z`, `…+01:00`).
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeError> {
        parse(s).ok_or_else(|| TimeError(s.to_string()))
    }

    /// `--since`/`--until`: an RFC 3339 time, or a duration before `now`
    /// (`30s`, `5m`, `1h30m`, `2d`).
    pub fn parse_relative(s: &str, now: Timestamp) -> Result<Self, TimeError> {
        if let Some(t) = parse(s) {
            return Ok(t);
        }
        let d = parse_duration(s).ok_or_else(|| TimeError(s.to_string()))?;
        Ok(Self(now.0.saturating_sub(d)))
    }
}

/// `90s`, `5m`, `1h30m`, `2d`, `250ms` → nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale: u64 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(scale)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: u64,
    minute: u64,
    second: u64,
    nanos: u64,
}

impl Civil {
    fn of(ns: u64) -> Self {
        let secs = ns / 1_000_000_000;
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            nanos: ns % 1_000_000_000,
        }
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && matches!(tz.as_bytes()[0], b'+' | b'-') && tz.as_bytes()[3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let ns = u64::try_from(secs).ok()?.checked_mul(1_000_000_000)?.checked_add(u64::try_from(nanos).ok()?)?;
    Some(Timestamp(ns))
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = Civil::of(self.0);
        write!(f, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", c.year, c.month, c.day, c.hour, c.minute, c.second)?;
        match c.nanos {
            0 => {}
            n if n % 1_000_000 == 0 => write!(f, ".{:03}", n / 1_000_000)?,
            n if n % 1_000 == 0 => write!(f, ".{:06}", n / 1_000)?,
            n => write!(f, ".{n:09}")?,
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom(TimeError(s.into_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_protobuf_json_does() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(1_796_237_550_123_000_000).to_string(), "2026-12-02T18:52:30.123Z");
        assert_eq!(Timestamp(1_796_237_550_123_456_000).to_string(), "2026-12-02T18:52:30.123456Z");
        assert_eq!(Timestamp(951_782_400_000_000_001).to_string(), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(Timestamp(1_796_237_550_123_000_000).stamp_milli(), "Dec  2 18:52:30.123");
    }

    #[test]
    fn parses_what_it_writes_and_offsets() {
        for ns in [0, 1, 951_782_400_000_000_001, 1_796_237_550_123_456_789, 4_102_444_799_999_999_999] {
            let t = Timestamp(ns);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Ok(t));
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2026-12-02T19:52:30.5+01:00"),
            Timestamp::parse_rfc3339("2026-12-02T18:52:30.500Z")
        );
        assert!(Timestamp::parse_rfc3339("2026-13-02T18:52:30Z").is_err());
        assert!(Timestamp::parse_rfc3339("2026-12-02T18:52:30").is_err());
        assert!(Timestamp::parse_rfc3339("2026-12-02T18:52:30.Z").is_err());
    }

    #[test]
    fn relative_times() {
        let now = Timestamp(10_000_000_000_000);
        assert_eq!(Timestamp::parse_relative("90s", now), Ok(Timestamp(10_000_000_000_000 - 90_000_000_000)));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert!(Timestamp::parse_relative("5 minutes", now).is_err());
        assert!(parse_duration("").is_none());
    }
}
