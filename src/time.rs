//! Fixed durations, each with its reason, and deadline arithmetic that
//! cannot panic.
//!
//! Pure: no clock is read here; callers pass `now`. Durations an operator
//! may tune live in [`crate::config`], not here; what stays here is fixed
//! by the protocol or by the peers we measured.

use std::time::Duration;

use tokio::time::Instant;

/// How long the component side waits, after a server header it cannot use,
/// for the stream error that usually follows. Prosody refuses an unknown
/// domain by opening its stream *without an id* and then sending
/// `<host-unknown/>`; reporting "no id" instead would hide the real cause.
pub const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// Upper bound on writing a stream error to an instance we are refusing: a
/// peer that does not read must not hold the listener's task beyond the
/// handshake timeout for long.
pub const ERROR_WRITE_GRACE: Duration = Duration::from_secs(2);

/// What [`later`] falls back to when `at + d` does not fit in an `Instant`.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d` without the panic `Instant + Duration` has on overflow.
///
/// Configuration caps every duration (`config::MAX_DURATION`), so this is
/// defence in depth: an absurd timeout or ping interval becomes "about a
/// century", never a panic in the core (which holds every pending request)
/// or in the upstream task.
pub fn later(at: Instant, d: Duration) -> Instant {
    // The last fallback cannot happen on a real clock (a century fits);
    // it only keeps this function total.
    at.checked_add(d)
        .or_else(|| at.checked_add(CENTURY))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_adds_when_it_fits() {
        let t0 = Instant::now();
        assert_eq!(
            later(t0, Duration::from_secs(5)),
            t0 + Duration::from_secs(5)
        );
    }

    #[test]
    fn later_caps_an_overflowing_duration_at_about_a_century() {
        let t0 = Instant::now();
        let due = later(t0, Duration::MAX);
        assert_eq!(due, t0 + CENTURY);
    }
}
