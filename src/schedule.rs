//! When scheduled batch runs happen: a daily local time in a time zone, or a cron expression
//! evaluated in a time zone. Pure: `next_after` maps an instant to the next run's instant, with
//! daylight-saving transitions handled by jiff (a daily time that does not exist on a
//! spring-forward day runs when the clocks have jumped past it; a time that happens twice on a
//! fall-back day runs once, at the first).

use std::str::FromStr;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A batch schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every day at `at`, local time in `tz`.
    Daily { at: Time, tz: TimeZone },
    /// A cron expression (5 fields, or 6 with seconds first) in `tz`.
    Cron {
        expr: String,
        schedule: Box<jiff_cron::Schedule>,
        tz: TimeZone,
    },
}

impl Schedule {
    /// `daily` is `HH:MM` or `HH:MM:SS`; `cron` a cron expression; exactly one is given. `tz`
    /// is an IANA zone name (`Europe/Berlin`) or `UTC`.
    pub fn parse(daily: Option<&str>, cron: Option<&str>, tz: &str) -> Result<Schedule, String> {
        let tz = TimeZone::get(tz).map_err(|e| format!("unknown time zone {tz:?}: {e}"))?;
        match (daily, cron) {
            (Some(t), None) => {
                let at = Time::from_str(t)
                    .map_err(|e| format!("daily time {t:?} is not HH:MM[:SS]: {e}"))?;
                Ok(Schedule::Daily { at, tz })
            }
            (None, Some(expr)) => {
                let fields = expr.split_whitespace().count();
                let full = match fields {
                    5 => format!("0 {expr}"),
                    6 | 7 => expr.to_string(),
                    n => {
                        return Err(format!(
                            "cron {expr:?} has {n} fields; expected 5 (min hour day month weekday)"
                        ))
                    }
                };
                let schedule = jiff_cron::Schedule::from_str(&full)
                    .map_err(|e| format!("cron {expr:?}: {e}"))?;
                Ok(Schedule::Cron {
                    expr: expr.to_string(),
                    schedule: Box::new(schedule),
                    tz,
                })
            }
            _ => Err("set exactly one of daily_at and cron".into()),
        }
    }

    /// The first run strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Daily { at, tz } => {
                let local = after.to_zoned(tz.clone());
                let mut day = local.date();
                for _ in 0..3 {
                    let candidate = day.to_datetime(*at).to_zoned(tz.clone()).ok()?.timestamp();
                    if candidate > after {
                        return Some(candidate);
                    }
                    day = day.tomorrow().ok()?;
                }
                None
            }
            Schedule::Cron { schedule, tz, .. } => schedule
                .after(after.to_zoned(tz.clone()))
                .next()
                .map(|z| z.timestamp())
                .filter(|t| *t > after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn daily_time_in_a_zone() {
        let s = Schedule::parse(Some("02:00"), None, "Europe/Berlin").unwrap();
        // Winter: UTC+1.
        assert_eq!(
            s.next_after(ts("2026-01-10T00:00:00Z")),
            Some(ts("2026-01-10T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-01-10T01:00:00Z")),
            Some(ts("2026-01-11T01:00:00Z")),
            "strictly after"
        );
        // Summer: UTC+2.
        assert_eq!(
            s.next_after(ts("2026-07-10T12:00:00Z")),
            Some(ts("2026-07-11T00:00:00Z"))
        );
    }

    #[test]
    fn daily_time_across_dst_changes() {
        // 2026-03-29: Berlin jumps from 02:00 to 03:00; 02:30 does not exist that day.
        let s = Schedule::parse(Some("02:30"), None, "Europe/Berlin").unwrap();
        let spring = s.next_after(ts("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(
            spring,
            ts("2026-03-29T01:30:00Z"),
            "runs once the clocks have jumped (03:30 CEST)"
        );
        assert_eq!(s.next_after(spring), Some(ts("2026-03-30T00:30:00Z")));
        // 2026-10-25: 02:30 happens twice (CEST, then CET); it runs once, at the first.
        let fall = s.next_after(ts("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(fall, ts("2026-10-25T00:30:00Z"));
        assert_eq!(
            s.next_after(fall),
            Some(ts("2026-10-26T01:30:00Z")),
            "not again at 02:30 CET"
        );
    }

    #[test]
    fn cron_in_a_zone() {
        let s = Schedule::parse(None, Some("15 3 * * MON-FRI"), "America/New_York").unwrap();
        // Friday 2026-11-20 03:15 EST = 08:15Z; after it, the next is Monday 2026-11-23.
        assert_eq!(
            s.next_after(ts("2026-11-20T00:00:00Z")),
            Some(ts("2026-11-20T08:15:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-11-20T08:15:00Z")),
            Some(ts("2026-11-23T08:15:00Z"))
        );
        let every_6h = Schedule::parse(None, Some("0 */6 * * *"), "UTC").unwrap();
        assert_eq!(
            every_6h.next_after(ts("2026-11-23T05:59:59Z")),
            Some(ts("2026-11-23T06:00:00Z"))
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        assert!(Schedule::parse(Some("25:00"), None, "UTC")
            .unwrap_err()
            .contains("HH:MM"));
        assert!(Schedule::parse(None, Some("* * *"), "UTC")
            .unwrap_err()
            .contains("3 fields"));
        assert!(Schedule::parse(Some("02:00"), None, "Mars/Olympus")
            .unwrap_err()
            .contains("time zone"));
        assert!(Schedule::parse(Some("02:00"), Some("0 2 * * *"), "UTC")
            .unwrap_err()
            .contains("exactly one"));
    }
}
