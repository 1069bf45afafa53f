//! Date formats the protocols need, without a date crate.
//!
//! RFC 5322 dates for `Received:` headers and ISO 8601 UTC with
//! milliseconds for logs. Both are UTC: a mail server's clock zone is an
//! operator concern, and `+0000` is always valid (RFC 5322 §3.3).

use std::time::{SystemTime, UNIX_EPOCH};

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn split(t: SystemTime) -> (i64, u32, u32, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let (y, m, day) = civil_from_days(days);
    (y, m, day, secs % 86_400, d.subsec_millis())
}

/// `Mon, 23 Nov 2026 10:00:00 +0000` (RFC 5322 §3.3).
pub fn rfc5322(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, sod, _) = split(t);
    let days = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400;
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// `2026-11-23T10:00:00.123Z`.
pub fn iso8601_millis(t: SystemTime) -> String {
    let mut s = String::with_capacity(24);
    push_iso8601_millis(&mut s, t);
    s
}

/// Appends `iso8601_millis(t)` to `out` without allocating (hot paths:
/// one per proxied request).
pub fn push_iso8601_millis(out: &mut String, t: SystemTime) {
    let (y, m, d, sod, ms) = split(t);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            if let Some(c) = b.get_mut(i) {
                *c = b'0' + (v % 10) as u8;
            }
            v /= 10;
        }
    };
    put(0, 4, u64::try_from(y).unwrap_or(0).min(9999));
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(d));
    put(11, 2, sod / 3600);
    put(14, 2, sod / 60 % 60);
    put(17, 2, sod % 60);
    put(20, 3, u64::from(ms));
    out.push_str(std::str::from_utf8(&b).unwrap_or("1970-01-01T00:00:00.000Z"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instant() {
        // 2026-11-23T09:06:05.250Z was a Monday.
        let t = UNIX_EPOCH + Duration::from_millis(1_795_424_765_250);
        assert_eq!(iso8601_millis(t), "2026-11-23T09:06:05.250Z");
        assert_eq!(rfc5322(t), "Mon, 23 Nov 2026 09:06:05 +0000");
    }

    #[test]
    fn leap_day() {
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&iso8601_millis(t)[..10], "2000-02-29");
    }
}
