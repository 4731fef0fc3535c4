//! Cron schedules as CronJobs write them (the syntax of the robfig/cron standard parser
//! that Kubernetes uses): five fields — minute, hour, day of month, month, day of week —
//! with `*`, `?`, ranges, steps, lists and month/weekday names, the `@yearly` … `@hourly`
//! descriptors and `@every <duration>`; and the next run after a given instant in a time
//! zone, walking wall-clock time so that daylight-saving changes neither skip nor repeat
//! a run.

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// A five-field cron expression.
    Cron(Fields),
    /// `@every <duration>`: a fixed delay after the previous run (whole seconds).
    Every(SignedDuration),
}

/// The five fields of a cron expression as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day of month or day of week was `*`/`?`: then both must match, otherwise either.
    day_star: bool,
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// How far ahead a next run is searched before a schedule is declared never to fire
/// (e.g. `0 0 30 2 *`), as robfig/cron does.
const SEARCH_YEARS: i16 = 5;

fn value(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(b.min + i as u32);
    }
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}"))
}

/// One field: a comma-separated list of `*`, `?`, `a`, `a-b`, each with an optional
/// `/step`. Returns the bits and whether the field was a plain star.
fn field(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in expr.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("failed to parse int from {s}"))?,
                ),
            ),
            None => (part, None),
        };
        let (mut start, mut end, is_star) = if range == "*" || range == "?" {
            (b.min, b.max, true)
        } else {
            match range.split_once('-') {
                Some((lo, hi)) => (value(lo, b)?, value(hi, b)?, false),
                None => {
                    let v = value(range, b)?;
                    (v, v, false)
                }
            }
        };
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        // `a/n` means `a-max/n`.
        if !is_star && !range.contains('-') && part.contains('/') {
            end = b.max;
        }
        if start < b.min {
            return Err(format!(
                "beginning of range ({start}) below minimum ({}): {part}",
                b.min
            ));
        }
        if end > b.max {
            return Err(format!(
                "end of range ({end}) above maximum ({}): {part}",
                b.max
            ));
        }
        if start > end {
            return Err(format!(
                "beginning of range ({start}) beyond end of range ({end}): {part}"
            ));
        }
        star |= is_star && step == 1;
        while start <= end {
            bits |= 1 << start;
            start += step;
        }
    }
    Ok((bits, star))
}

/// `@every` durations in Go's syntax: `90s`, `5m`, `1h30m`, `1.5h`.
fn go_duration(s: &str) -> Result<SignedDuration, String> {
    let bad = || format!("failed to parse duration {s}");
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = &rest[unit_len..];
    }
    // robfig/cron rounds a delay down to whole seconds, with a minimum of one.
    Ok(SignedDuration::from_secs((total as i64).max(1)))
}

impl Schedule {
    /// Parses a schedule; the error reads like the standard parser's.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("empty spec string".into());
        }
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        if let Some(d) = spec.strip_prefix("@every ") {
            return Ok(Schedule::Every(go_duration(d)?));
        }
        let spec = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s => s,
        };
        let parts: Vec<&str> = spec.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {spec}",
                parts.len()
            ));
        }
        let (minutes, _) = field(parts[0], &MINUTE)?;
        let (hours, _) = field(parts[1], &HOUR)?;
        let (days, day_star) = field(parts[2], &DAY)?;
        let (months, _) = field(parts[3], &MONTH)?;
        let (weekdays, weekday_star) = field(parts[4], &WEEKDAY)?;
        Ok(Schedule::Cron(Fields {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            day_star: day_star || weekday_star,
        }))
    }

    /// The first run strictly after `after`, with wall-clock fields read in `tz`; `None`
    /// when the schedule never fires within the next five years.
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Every(d) => {
                let secs = after.as_second() + d.as_secs();
                Timestamp::from_second(secs).ok()
            }
            Schedule::Cron(f) => f.next(after, tz),
        }
    }
}

impl Fields {
    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.days & (1 << dt.day()) != 0;
        let dow = self.weekdays & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        if self.day_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        let limit = start.year().checked_add(SEARCH_YEARS)?;
        // The next whole minute of wall-clock time.
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(SignedDuration::from_mins(1))
            .ok()?;
        loop {
            if dt.year() > limit {
                return None;
            }
            if self.months & (1 << dt.month()) == 0 {
                dt = dt
                    .last_of_month()
                    .date()
                    .tomorrow()
                    .ok()?
                    .to_datetime(Time::midnight());
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt.date().tomorrow().ok()?.to_datetime(Time::midnight());
                continue;
            }
            if self.hours & (1 << dt.hour()) == 0 {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(SignedDuration::from_hours(1))
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << dt.minute()) == 0 {
                dt = dt.checked_add(SignedDuration::from_mins(1)).ok()?;
                continue;
            }
            // A wall-clock time skipped by a DST change runs at the same offset after
            // it; a repeated one runs at its first occurrence only.
            let at = tz.to_ambiguous_timestamp(dt).compatible().ok()?;
            if at > after {
                return Some(at);
            }
            dt = dt.checked_add(SignedDuration::from_mins(1)).ok()?;
        }
    }
}

/// Parses an IANA time zone name (`spec.timeZone`) from the system's tz database.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name.starts_with(['/', '.']) || name.contains("..") {
        return Err(format!("unknown time zone {name}"));
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next_n(spec: &str, from: &str, tz: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(spec).expect("parse");
        let tz = time_zone(tz).expect("tz");
        let mut t = ts(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next(t, &tz).expect("next");
            out.push(t.to_string());
        }
        out
    }

    #[test]
    fn parses_fields_ranges_steps_lists_and_names() {
        assert!(Schedule::parse("* * * * *").is_ok());
        assert!(Schedule::parse("*/15 0-6,22 1-31/2 JAN-mar,dec mon-FRI").is_ok());
        assert!(Schedule::parse("0 0 ? * ?").is_ok());
        assert!(Schedule::parse("5/10 * * * *").is_ok());
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "* * * * sat-sun",
            "*/0 * * * *",
            "5-2 * * * *",
            "x * * * *",
            "@fortnightly",
            "TZ=UTC * * * * *",
            "CRON_TZ=Europe/Berlin 0 * * * *",
            "@every",
            "@every 5 minutes",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            Schedule::parse("@every 1m30s"),
            Ok(Schedule::Every(SignedDuration::from_secs(90)))
        );
        assert_eq!(Schedule::parse("@hourly"), Schedule::parse("0 * * * *"));
        assert_eq!(Schedule::parse("@daily"), Schedule::parse("0 0 * * *"));
        assert_eq!(Schedule::parse("@weekly"), Schedule::parse("0 0 * * sun"));
    }

    #[test]
    fn next_runs_in_utc() {
        assert_eq!(
            next_n("* * * * *", "2024-05-01T10:00:30Z", "UTC", 2),
            ["2024-05-01T10:01:00Z", "2024-05-01T10:02:00Z"]
        );
        assert_eq!(
            next_n("*/20 9-10 * * *", "2024-05-01T10:30:00Z", "UTC", 3),
            [
                "2024-05-01T10:40:00Z",
                "2024-05-02T09:00:00Z",
                "2024-05-02T09:20:00Z"
            ]
        );
        // Steps from a start value: 5, 15, 25, …
        assert_eq!(
            next_n("5/10 * * * *", "2024-05-01T10:06:00Z", "UTC", 2),
            ["2024-05-01T10:15:00Z", "2024-05-01T10:25:00Z"]
        );
        // Leap day: the next 29 February.
        assert_eq!(
            next_n("0 12 29 2 *", "2024-03-01T00:00:00Z", "UTC", 1),
            ["2028-02-29T12:00:00Z"]
        );
        assert_eq!(
            next_n("@monthly", "2024-01-31T00:00:00Z", "UTC", 2),
            ["2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"]
        );
        assert_eq!(
            next_n("@every 90s", "2024-05-01T10:00:00Z", "UTC", 2),
            ["2024-05-01T10:01:30Z", "2024-05-01T10:03:00Z"]
        );
        // Never fires: 30 February.
        let s = Schedule::parse("0 0 30 2 *").expect("parse");
        assert_eq!(s.next(ts("2024-01-01T00:00:00Z"), &TimeZone::UTC), None);
    }

    #[test]
    fn day_of_month_and_weekday_combine_like_cron() {
        // Both restricted: either matches (1 June 2024 is a Saturday; 3 June a Monday).
        assert_eq!(
            next_n("0 0 1 * mon", "2024-05-31T12:00:00Z", "UTC", 3),
            [
                "2024-06-01T00:00:00Z",
                "2024-06-03T00:00:00Z",
                "2024-06-10T00:00:00Z"
            ]
        );
        // Day of month is a star: only Mondays.
        assert_eq!(
            next_n("0 0 * * 1", "2024-05-31T12:00:00Z", "UTC", 1),
            ["2024-06-03T00:00:00Z"]
        );
        // Weekdays by name (a range must not wrap: `sat-sun` is refused).
        assert_eq!(
            next_n("30 8 * * sat,SUN", "2024-05-31T12:00:00Z", "UTC", 2),
            ["2024-06-01T08:30:00Z", "2024-06-02T08:30:00Z"]
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        // 09:00 in New York is 13:00 UTC in summer, 14:00 in winter.
        assert_eq!(
            next_n("0 9 * * *", "2024-11-02T12:00:00Z", "America/New_York", 2),
            ["2024-11-02T13:00:00Z", "2024-11-03T14:00:00Z"]
        );
        // Spring forward in Berlin (31 March 2024, 02:00 → 03:00): 02:30 does not
        // exist and runs once at 03:30 CEST.
        assert_eq!(
            next_n("30 2 * * *", "2024-03-30T12:00:00Z", "Europe/Berlin", 2),
            ["2024-03-31T01:30:00Z", "2024-04-01T00:30:00Z"]
        );
        // Fall back (27 October 2024, 03:00 → 02:00): 02:30 happens twice, runs once.
        assert_eq!(
            next_n("30 2 * * *", "2024-10-26T12:00:00Z", "Europe/Berlin", 2),
            ["2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"]
        );
        // Hourly across the fall-back hour: each wall-clock hour once, so the repeated
        // 02:00 (01:00 UTC) does not run a second time.
        assert_eq!(
            next_n("0 * * * *", "2024-10-27T00:30:00Z", "Europe/Berlin", 2),
            ["2024-10-27T02:00:00Z", "2024-10-27T03:00:00Z"]
        );
        assert!(time_zone("Mars/Olympus_Mons").is_err());
        assert!(time_zone("../etc/passwd").is_err());
        assert!(time_zone("Asia/Tokyo").is_ok());
    }
}
