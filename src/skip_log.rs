//! One log line per per-stanza limit per minute: any user can send
//! stanzas over the upstream limits at will, and the log must not become
//! the next thing they can flood.

use tokio::time::Instant;

use crate::xml::frame::Limit;

/// Rate-limits the log line for skipped stanzas: any user can send them
/// at will, and the log must not become the next thing they can flood.
#[derive(Debug, Default)]
pub struct SkipLog {
    /// Per [`Limit`]: when its last line was written, and how many were
    /// skipped since without one.
    last: [Option<(Instant, u64)>; Limit::ALL.len()],
}

impl SkipLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Whether to log this one now; if so, how many went unlogged before.
    pub fn admit(&mut self, limit: Limit, now: Instant) -> Option<u64> {
        match &mut self.last[limit.index()] {
            Some((at, quiet)) if now.duration_since(*at) < Self::EVERY => {
                *quiet += 1;
                None
            }
            slot => {
                let quiet = slot.map_or(0, |(_, q)| q);
                *slot = Some((now, 0));
                Some(quiet)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_line_per_limit_per_minute_with_the_count_of_the_quiet_ones() {
        let t0 = Instant::now();
        let mut log = SkipLog::default();
        assert_eq!(log.admit(Limit::Size, t0), Some(0));
        assert_eq!(log.admit(Limit::Size, t0 + Duration::from_secs(1)), None);
        assert_eq!(log.admit(Limit::Size, t0 + Duration::from_secs(59)), None);
        // Another limit has its own minute.
        assert_eq!(
            log.admit(Limit::Depth, t0 + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(
            log.admit(Limit::Size, t0 + Duration::from_secs(60)),
            Some(2)
        );
        assert_eq!(log.admit(Limit::Size, t0 + Duration::from_secs(61)), None);
        assert_eq!(
            log.admit(Limit::Token, t0 + Duration::from_secs(61)),
            Some(0)
        );
    }
}
