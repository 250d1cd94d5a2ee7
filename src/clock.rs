//! Wall-clock time as text: RFC 3339 UTC for records, local hh:mm:ss for displays.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `2024-06-01T15:30:12.345Z`.
pub fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    utc_rfc3339(d.as_secs() as i64, d.subsec_millis())
}

/// `secs` since the Unix epoch as `YYYY-MM-DDThh:mm:ss.mmmZ`.
pub fn utc_rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

/// The local time of day, `hh:mm:ss` (UTC, marked so, if the local zone cannot be read).
pub fn local_hms() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = secs as libc::time_t;
    // SAFETY: localtime_r only writes into `tm`, which we own; all-zero is a valid `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    } else {
        let r = secs % 86_400;
        format!("{:02}:{:02}:{:02} UTC", r / 3600, r % 3600 / 60, r % 60)
    }
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
    }

    #[test]
    fn now_is_well_formed() {
        let n = utc_now();
        assert_eq!(n.len(), 24, "{n}");
        assert!(n.ends_with('Z') && n.as_bytes()[10] == b'T', "{n}");
        assert_eq!(local_hms().split(':').count(), 3);
    }
}
