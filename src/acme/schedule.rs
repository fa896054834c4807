//! When to renew and when to try again: pure functions of times, unit-tested.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

const DAY: i64 = 24 * 3600;

/// When a certificate valid from `not_before` to `not_after` should be renewed: `renew_before`
/// ahead of expiry if given (and shorter than the lifetime), else when a third of the lifetime is
/// left, or half for certificates shorter than 10 days (Let's Encrypt's advice).
pub fn renew_at(not_before: Timestamp, not_after: Timestamp, renew_before: Option<Duration>) -> Timestamp {
    let lifetime = not_after.as_second() - not_before.as_second();
    let ahead = match renew_before.map(|rb| i64::try_from(rb.as_secs()).unwrap_or(i64::MAX)) {
        Some(rb) if rb < lifetime => rb,
        _ if lifetime < 10 * DAY => lifetime / 2,
        _ => lifetime / 3,
    };
    not_after - SignedDuration::from_secs(ahead)
}

/// A renewal time inside an ARI suggested window (RFC 9773 §4.2): now if the window has begun,
/// otherwise a uniformly random moment in it. `random` is in `[0, 1)`.
pub fn within_window(start: Timestamp, end: Timestamp, now: Timestamp, random: f64) -> Timestamp {
    if now >= start || end <= start {
        return now.max(start.min(end));
    }
    let span = (end.as_second() - start.as_second()) as f64;
    start + SignedDuration::from_secs((span * random.clamp(0.0, 1.0)) as i64)
}

/// Delay before attempt `failures + 1`: `base`, ten and a hundred times `base`, then `max`
/// (1 min, 10 min, 100 min, then daily with the defaults), never more than `max`.
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    match failures {
        0 | 1 => base.min(max),
        2 => base.saturating_mul(10).min(max),
        3 => base.saturating_mul(100).min(max),
        _ => max,
    }
}

/// The end of a rate limit, from a problem detail such as
/// `... retry after 2026-11-28 13:00:00 UTC: see https://...`.
pub fn retry_after_from_detail(detail: &str) -> Option<Timestamp> {
    let lower = detail.to_ascii_lowercase();
    let at = lower.find("retry after ")? + "retry after ".len();
    let rest = &detail[at..];
    let text: String = rest.chars().take(23).collect();
    let text = text.trim_end_matches([':', ',', '.', ' ']);
    let iso = text.trim_end_matches(" UTC").replacen(' ', "T", 1);
    format!("{iso}Z").parse().ok().or_else(|| text.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn renews_at_a_third_or_half_of_the_lifetime() {
        // 90 days: renew 30 days before expiry.
        assert_eq!(
            renew_at(t("2026-01-01T00:00:00Z"), t("2026-04-01T00:00:00Z"), None),
            t("2026-03-02T00:00:00Z")
        );
        // 6 days: renew after 3.
        assert_eq!(
            renew_at(t("2026-01-01T00:00:00Z"), t("2026-01-07T00:00:00Z"), None),
            t("2026-01-04T00:00:00Z")
        );
        // renew-before wins when shorter than the lifetime.
        assert_eq!(
            renew_at(
                t("2026-01-01T00:00:00Z"),
                t("2026-04-01T00:00:00Z"),
                Some(Duration::from_secs(5 * 86400))
            ),
            t("2026-03-27T00:00:00Z")
        );
        assert_eq!(
            renew_at(
                t("2026-01-01T00:00:00Z"),
                t("2026-01-02T00:00:00Z"),
                Some(Duration::from_secs(10 * 86400))
            ),
            t("2026-01-01T12:00:00Z"),
            "a renew-before longer than the lifetime is ignored"
        );
        assert_eq!(
            renew_at(
                t("2026-01-01T00:00:00Z"),
                t("2026-01-02T00:00:00Z"),
                Some(Duration::MAX)
            ),
            t("2026-01-01T12:00:00Z"),
            "however long"
        );
    }

    #[test]
    fn ari_windows() {
        let (start, end) = (t("2026-03-01T00:00:00Z"), t("2026-03-03T00:00:00Z"));
        assert_eq!(within_window(start, end, t("2026-01-01T00:00:00Z"), 0.0), start);
        assert_eq!(
            within_window(start, end, t("2026-01-01T00:00:00Z"), 0.5),
            t("2026-03-02T00:00:00Z")
        );
        assert_eq!(
            within_window(start, end, t("2026-03-02T00:00:00Z"), 0.9),
            t("2026-03-02T00:00:00Z")
        );
    }

    #[test]
    fn backoff_grows_tenfold_up_to_a_day() {
        let (m, day) = (Duration::from_secs(60), Duration::from_secs(86400));
        assert_eq!(backoff(1, m, day), m);
        assert_eq!(backoff(2, m, day), m * 10);
        assert_eq!(backoff(3, m, day), m * 100);
        assert_eq!(backoff(4, m, day), day);
        assert_eq!(backoff(40, m, day), day);
        assert_eq!(backoff(3, m, m * 5), m * 5);
    }

    #[test]
    fn reads_rate_limit_ends() {
        assert_eq!(
            retry_after_from_detail(
                "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-11-28 13:05:00 UTC: see https://letsencrypt.org/docs/rate-limits/"
            ),
            Some(t("2026-11-28T13:05:00Z"))
        );
        assert_eq!(retry_after_from_detail("Service busy"), None);
    }
}
