//! Dead-link detection for the upstream stream, as pure logic: when to
//! ping, which answer is ours, and when silence means the link is gone.
//!
//! A TCP peer that vanished without FIN or RST (a rebooted host, a NAT
//! that forgot the mapping, a cut cable) is otherwise noticed only when
//! the kernel gives up retransmitting a write, which takes many minutes,
//! and only if something is written at all. Requests routed into such a
//! link would wait for their timeout one by one. XEP-0114 servers send
//! components no keepalives of their own, so silence alone proves nothing:
//! after a quiet spell we ask (XEP-0199 ping) and wait for any byte.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::time::later;
use crate::xml::escape;

/// The namespace of XEP-0199 pings.
pub const NS_PING: &str = "urn:xmpp:ping";

/// What the link needs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Nothing until this instant (then ask again).
    Wait(Instant),
    /// Write this ping now.
    Ping(Bytes),
    /// No byte arrived within the timeout after a ping: give the link up.
    Dead { silent_for: Duration },
}

/// The liveness state of one upstream session. Times are passed in, so
/// every path is a unit test.
#[derive(Debug)]
pub struct Liveness {
    from: String,
    to: String,
    interval: Duration,
    timeout: Duration,
    last_input: Instant,
    /// The id of the ping in flight and when it was sent.
    outstanding: Option<(String, Instant)>,
    sent: u64,
}

impl Liveness {
    /// For a component `domain`, pinging the server's own domain (the
    /// component domain without its first label: `proxy.example.org` →
    /// `example.org`, where a server hosting the component normally
    /// answers pings). A one-label domain pings itself through the server.
    pub fn new(domain: &str, interval: Duration, timeout: Duration, now: Instant) -> Self {
        let to = match domain.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => parent,
            _ => domain,
        };
        Liveness {
            from: domain.to_owned(),
            to: to.to_owned(),
            interval,
            timeout,
            last_input: now,
            outstanding: None,
            sent: 0,
        }
    }

    /// Any frame from the server, a keepalive included, proves the link
    /// carries bytes.
    pub fn input(&mut self, now: Instant) {
        self.last_input = now;
        self.outstanding = None;
    }

    /// True if an iq result or error with this `from` and `id` answers
    /// one of our pings: the stanza is ours to absorb, not the router's.
    pub fn is_answer(&self, from: Option<&str>, id: Option<&str>) -> bool {
        from.is_some_and(|f| f.eq_ignore_ascii_case(&self.to))
            && id.is_some_and(|id| id.starts_with(PING_ID_PREFIX))
    }

    /// What to do at `now`.
    pub fn check(&mut self, now: Instant) -> Check {
        match &self.outstanding {
            Some((_, sent_at)) => {
                let deadline = later(*sent_at, self.timeout);
                if now >= deadline {
                    Check::Dead {
                        silent_for: now.saturating_duration_since(self.last_input),
                    }
                } else {
                    Check::Wait(deadline)
                }
            }
            None => {
                let due = later(self.last_input, self.interval);
                if now < due {
                    return Check::Wait(due);
                }
                self.sent += 1;
                let id = format!("{PING_ID_PREFIX}{}", self.sent);
                let ping = Bytes::from(format!(
                    "<iq type='get' id='{id}' from='{}' to='{}'><ping xmlns='{NS_PING}'/></iq>",
                    escape::attr(&self.from, b'\''),
                    escape::attr(&self.to, b'\''),
                ));
                self.outstanding = Some((id, now));
                Check::Ping(ping)
            }
        }
    }
}

/// Ids of our pings. An answer is recognised by it and by coming from
/// the domain pinged; the server stamps `from`, so no client can forge it.
const PING_ID_PREFIX: &str = "jatproxy-ping-";

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(120);
    const T: Duration = Duration::from_secs(30);

    #[test]
    fn quiet_link_is_pinged_then_given_up() {
        let t0 = Instant::now();
        let mut l = Liveness::new("proxy.example.test", I, T, t0);
        assert_eq!(l.check(t0), Check::Wait(t0 + I));
        let Check::Ping(p) = l.check(t0 + I) else {
            panic!("expected a ping")
        };
        assert_eq!(
            &p[..],
            b"<iq type='get' id='jatproxy-ping-1' from='proxy.example.test' \
              to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>"
        );
        // Asking again while the ping is out sends no second one.
        assert_eq!(l.check(t0 + I), Check::Wait(t0 + I + T));
        assert_eq!(l.check(t0 + I + T), Check::Dead { silent_for: I + T });
    }

    #[test]
    fn any_input_keeps_the_link_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new("proxy.example.test", I, T, t0);
        l.input(t0 + I / 2);
        assert_eq!(l.check(t0 + I), Check::Wait(t0 + I / 2 + I));
        let t1 = t0 + I / 2 + I;
        assert!(matches!(l.check(t1), Check::Ping(_)));
        // A whitespace keepalive, or the answer, before the timeout.
        l.input(t1 + T / 2);
        assert_eq!(l.check(t1 + T), Check::Wait(t1 + T / 2 + I));
        let Check::Ping(p) = l.check(t1 + T / 2 + I) else {
            panic!("expected a ping")
        };
        assert!(p.starts_with(b"<iq type='get' id='jatproxy-ping-2' "));
    }

    #[test]
    fn answers_are_recognised_by_id() {
        let l = Liveness::new("proxy.example.test", I, T, Instant::now());
        assert!(l.is_answer(Some("example.test"), Some("jatproxy-ping-3")));
        assert!(l.is_answer(Some("Example.Test"), Some("jatproxy-ping-1")));
        assert!(!l.is_answer(Some("alice@example.test/x"), Some("jatproxy-ping-1")));
        assert!(!l.is_answer(Some("example.test"), Some("1234")));
        assert!(!l.is_answer(Some("example.test"), None));
    }

    #[test]
    fn absurd_durations_do_not_panic() {
        let t0 = Instant::now();
        let mut l = Liveness::new("proxy.example.test", Duration::MAX, Duration::MAX, t0);
        let Check::Wait(due) = l.check(t0) else {
            panic!("no ping before the interval")
        };
        assert!(due > t0 + Duration::from_secs(365 * 24 * 3600));
        // Input at the far end still computes the next deadline.
        let mut l = Liveness::new("proxy.example.test", I, Duration::MAX, t0);
        assert!(matches!(l.check(t0 + I), Check::Ping(_)));
        assert!(matches!(l.check(t0 + I), Check::Wait(d) if d > t0 + I + T));
    }

    #[test]
    fn one_label_domain_pings_itself() {
        let t0 = Instant::now();
        let mut l = Liveness::new("localhost", I, T, t0);
        let Check::Ping(p) = l.check(t0 + I) else {
            panic!("expected a ping")
        };
        assert!(p.ends_with(b"to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"));
    }
}
