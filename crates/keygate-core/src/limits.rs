//! Rate limits and usage quotas of API keys, as written in the config, the
//! admin API and the CLI.
//!
//! - A **rate limit** is `N/UNIT` with an optional burst: `100/s`,
//!   `6000/min burst 500`, `20/h`. Requests are spaced by the generic cell
//!   rate algorithm (GCRA): one every `UNIT / N`, with up to `burst`
//!   (default `N`) at once after a quiet spell.
//! - A **quota** is `N/day` or `N/month`: at most N requests in each UTC
//!   calendar day or month; the count starts again (refills) when the next
//!   one begins.
//! - `unlimited`, on a key, lifts its kind's default.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A request rate with bursts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per `per`.
    pub count: u32,
    /// The unit: one second, minute or hour.
    pub per: Duration,
    /// Requests allowed at once (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// The steady spacing between two requests: `per / count`.
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

/// The calendar period of a quota (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaPeriod {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

/// At most `count` requests per calendar `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Requests per period.
    pub count: u64,
    /// Day or month.
    pub period: QuotaPeriod,
}

/// A key's own setting: none of its own (its kind's default applies), none
/// at all, or a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLimit<T> {
    /// The kind's default applies.
    Default,
    /// No limit for this key, whatever the default.
    Unlimited,
    /// This key's own.
    Set(T),
}

impl<T: Copy> KeyLimit<T> {
    /// The limit in force, given the kind's default.
    pub fn or_default(self, default: Option<T>) -> Option<T> {
        match self {
            KeyLimit::Default => default,
            KeyLimit::Unlimited => None,
            KeyLimit::Set(v) => Some(v),
        }
    }
}

impl<T: FromStr<Err = String>> KeyLimit<T> {
    /// Parses a stored or requested value: `None` or empty → default,
    /// `unlimited`, or a value.
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        match text.map(str::trim) {
            None | Some("") => Ok(KeyLimit::Default),
            Some(t) if t.eq_ignore_ascii_case("unlimited") => Ok(KeyLimit::Unlimited),
            Some(t) => t.parse().map(KeyLimit::Set),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a rate limit like 100/s, 6000/min burst 500 or 20/h");
        let mut words = s.split_whitespace();
        let rate = words.next().ok_or_else(bad)?;
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.parse().map_err(|_| bad())?;
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("`{s}`: the rate must be at least 1"));
        }
        if per / count < Duration::from_micros(1) {
            return Err(format!("`{s}`: at most 1000000 per second"));
        }
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => count,
            (Some("burst"), Some(b), None) => b.parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if burst == 0 {
            return Err(format!("`{s}`: the burst must be at least 1"));
        }
        Ok(RateLimit { count, per, burst })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

impl FromStr for Quota {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a quota like 10000/day or 250000/month");
        let (count, period) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let period = match period.trim() {
            "day" | "d" => QuotaPeriod::Day,
            "month" | "mo" => QuotaPeriod::Month,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("`{s}`: the quota must be at least 1"));
        }
        Ok(Quota { count, period })
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let period = match self.period {
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        };
        write!(f, "{}/{period}", self.count)
    }
}

impl Quota {
    /// The window `unix_secs` falls in: its name (`2026-12-01`, `2026-12`)
    /// and the seconds left until it ends.
    pub fn window(&self, unix_secs: u64) -> (String, u64) {
        let days = unix_secs / 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        match self.period {
            QuotaPeriod::Day => (
                format!("{y:04}-{m:02}-{d:02}"),
                (days + 1) * 86_400 - unix_secs,
            ),
            QuotaPeriod::Month => {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let next = days_from_civil(ny, nm, 1) as u64 * 86_400;
                (format!("{y:04}-{m:02}"), next - unix_secs)
            }
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(RateLimit);
serde_as_text!(Quota);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_print() {
        let r: RateLimit = "100/s".parse().unwrap();
        assert_eq!(
            (r.count, r.per, r.burst),
            (100, Duration::from_secs(1), 100)
        );
        assert_eq!(r.interval(), Duration::from_millis(10));
        assert_eq!(r.to_string(), "100/s");
        let r: RateLimit = "6000/min burst 500".parse().unwrap();
        assert_eq!(r.burst, 500);
        assert_eq!(r.interval(), Duration::from_millis(10));
        assert_eq!(r.to_string(), "6000/min burst 500");
        assert_eq!("20/h".parse::<RateLimit>().unwrap().per.as_secs(), 3600);
        for bad in [
            "",
            "100",
            "100/day",
            "0/s",
            "x/s",
            "10/s burst",
            "10/s burst 0",
            "10/s b 2",
            "2000000/s",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn quotas_parse_and_have_calendar_windows() {
        let q: Quota = "10000/day".parse().unwrap();
        assert_eq!(q.to_string(), "10000/day");
        // 2026-12-01T21:25:00Z
        let t = 1_796_160_300;
        assert_eq!(
            q.window(t),
            ("2026-12-01".into(), 86_400 - (21 * 3600 + 25 * 60))
        );
        let m: Quota = "5/month".parse().unwrap();
        let (name, left) = m.window(t);
        assert_eq!(name, "2026-12");
        // Until 2027-01-01T00:00:00Z.
        assert_eq!(t + left, 1_798_761_600);
        // Leap-year February.
        let feb = days_from_civil(2028, 2, 29) as u64 * 86_400;
        assert_eq!(m.window(feb).0, "2028-02");
        assert_eq!(m.window(feb).1, 86_400);
        for bad in ["", "10/week", "0/day", "-1/day", "day"] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
    }

    #[test]
    fn key_limits_override_the_default() {
        let d: RateLimit = "10/s".parse().unwrap();
        let own: RateLimit = "1/s".parse().unwrap();
        assert_eq!(
            KeyLimit::<RateLimit>::parse(None)
                .unwrap()
                .or_default(Some(d)),
            Some(d)
        );
        assert_eq!(
            KeyLimit::<RateLimit>::parse(Some("unlimited"))
                .unwrap()
                .or_default(Some(d)),
            None
        );
        assert_eq!(
            KeyLimit::<RateLimit>::parse(Some("1/s"))
                .unwrap()
                .or_default(Some(d)),
            Some(own)
        );
        assert!(KeyLimit::<RateLimit>::parse(Some("fast")).is_err());
    }
}
