//! Wall-clock time as text: RFC 3339 UTC for records, local hh:mm:ss for displays.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

const RFC3339_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
const RFC3339_SECS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const HMS: &[FormatItem<'static>] = format_description!("[hour]:[minute]:[second]");

/// Now, as `2024-06-01T15:30:12.345Z`.
pub fn utc_now() -> String {
    let now = OffsetDateTime::now_utc();
    utc_rfc3339(now.unix_timestamp(), now.millisecond().into())
}

/// `secs` since the Unix epoch as `YYYY-MM-DDThh:mm:ss.mmmZ` (`millis` above 999 counts as 999).
pub fn utc_rfc3339(secs: i64, millis: u32) -> String {
    let t = at(secs) + time::Duration::milliseconds(i64::from(millis.min(999)));
    format(t, RFC3339_MILLIS)
}

/// `secs` since the Unix epoch as `YYYY-MM-DDThh:mm:ssZ` (whole seconds).
pub fn utc_rfc3339_secs(secs: i64) -> String {
    format(at(secs), RFC3339_SECS)
}

/// The local time of day, `hh:mm:ss` (UTC, marked so, if the local zone cannot be read).
///
/// `time`'s local offset (feature `local-offset`) reads the zone with `localtime_r`; since
/// time 0.3.37 it no longer refuses in multi-threaded processes (only the `tzset` refresh is
/// skipped there), so it is usable from the tokio runtime and no libc call is needed here.
pub fn local_hms() -> String {
    let now = OffsetDateTime::now_utc();
    match UtcOffset::local_offset_at(now) {
        Ok(off) => format(now.to_offset(off), HMS),
        Err(_) => format!("{} UTC", format(now, HMS)),
    }
}

/// The instant `secs` after the epoch, clamped to the years `time` represents (±9999).
fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(if secs < 0 {
        OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT)
    } else {
        OffsetDateTime::new_utc(time::Date::MAX, time::Time::MAX)
    })
}

fn format(t: OffsetDateTime, f: &[FormatItem<'_>]) -> String {
    // Formatting a date within ±9999 with these descriptions cannot fail.
    t.format(f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(utc_rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day) 12:34:56
        assert_eq!(utc_rfc3339(951_827_696, 7), "2000-02-29T12:34:56.007Z");
        assert_eq!(utc_rfc3339(1_717_255_812, 345), "2024-06-01T15:30:12.345Z");
        assert_eq!(utc_rfc3339(-1, 0), "1969-12-31T23:59:59.000Z");
        assert_eq!(utc_rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339_secs(1_795_642_002), "2026-11-25T21:26:42Z");
    }

    #[test]
    fn now_is_well_formed() {
        let n = utc_now();
        assert_eq!(n.len(), 24, "{n}");
        assert!(n.ends_with('Z') && n.as_bytes()[10] == b'T', "{n}");
        let l = local_hms();
        assert_eq!(l.split(':').count(), 3, "{l}");
        // From a multi-threaded test binary the local zone is still readable.
        assert!(!l.ends_with("UTC"), "{l}");
    }
}
