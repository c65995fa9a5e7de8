//! What the core knows and publishes: the [`Status`] snapshot, and the
//! [`Counters`] only metrics need, with the [`Observation`]s connection
//! tasks report for them.
//!
//! A leaf shared by the core (which owns and updates it), the connection
//! tasks (which send observations) and the metrics endpoint (which renders
//! it). It holds data and counting only: no I/O, no tasks, and it may not
//! import the core, the app or any connection task.

use std::collections::BTreeMap;

use crate::handshake::HandshakeError;
use crate::pool::Member;
use crate::router::Stats;

/// A snapshot of the proxy's state, published after every event: for
/// tests to wait on conditions, and for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub upstream_online: bool,
    /// Upstream sessions established so far.
    pub upstream_sessions: u64,
    /// The members of the pool, in arrival order: qualified client
    /// resources and connected instances, quarantined ones included
    /// (resources still being qualified are not members yet). Those that
    /// can take a request now are [`Status::eligible`].
    pub pool: Vec<Member>,
    pub pending: usize,
    /// Stanzas held for upstream until it comes back: what
    /// `limits.upstream_buffer` bounds (the policy is
    /// [`crate::backlog::Backlog`]).
    pub upstream_buffer: usize,
    /// Stanzas dropped because the upstream buffer was full. Never answers
    /// to requests: those are held whatever the bound (see
    /// [`crate::backlog::Backlog::hold`]).
    pub upstream_buffer_dropped: u64,
    /// Requests from instances that were answered (timed out) while they
    /// waited for upstream, and so were not sent after all.
    pub requests_withdrawn: u64,
    pub stats: Stats,
    /// What only metrics need (traffic, handshake failures, reloads).
    pub counters: Counters,
}

/// Pool members by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByKind {
    pub resources: usize,
    pub instances: usize,
}

impl Status {
    /// The members that can take a request now, by kind: in the pool (so
    /// qualified) and not quarantined. What `jatproxy_pool_members`
    /// shows; an operator reads it as "how many can serve", so a member
    /// that refuses everything and sits out its quarantine must not count.
    pub fn eligible(&self) -> ByKind {
        let mut n = ByKind::default();
        let serving = self
            .pool
            .iter()
            .filter(|m| !self.stats.quarantined.contains(m));
        for m in serving {
            match m {
                Member::Resource(_) => n.resources += 1,
                Member::Instance(_) => n.instances += 1,
            }
        }
        n
    }
}

/// Which link a stanza crossed, and which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Read from the XMPP server.
    UpstreamIn,
    /// Written to the XMPP server.
    UpstreamOut,
    /// Read from a component instance.
    InstancesIn,
    /// Queued for a component instance.
    InstancesOut,
}

impl Direction {
    pub const ALL: [Direction; 4] = [
        Direction::UpstreamIn,
        Direction::UpstreamOut,
        Direction::InstancesIn,
        Direction::InstancesOut,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// `(peer, direction)` label values.
    pub(crate) fn labels(self) -> (&'static str, &'static str) {
        match self {
            Direction::UpstreamIn => ("upstream", "in"),
            Direction::UpstreamOut => ("upstream", "out"),
            Direction::InstancesIn => ("instance", "in"),
            Direction::InstancesOut => ("instance", "out"),
        }
    }
}

/// Which side of XEP-0114 a handshake failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// Our connection to the XMPP server.
    Upstream,
    /// An instance connecting to our listener.
    Instance,
}

impl Side {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Upstream => "upstream",
            Side::Instance => "instance",
        }
    }
}

/// Something a connection task saw that only metrics care about; sent to
/// the core as [`crate::event::Event::Observed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    HandshakeFailed {
        side: Side,
        reason: &'static str,
        condition: &'static str,
    },
    /// A TLS handshake failed on `side`'s link, for `reason` (a
    /// [`crate::tls::TlsFailure`] label).
    TlsHandshakeFailed { side: Side, reason: &'static str },
    /// The TCP connection to the server failed or timed out.
    UpstreamConnectFailed,
    /// A reload was refused (invalid file, or a key needing a restart).
    ReloadRefused,
}

impl Observation {
    pub fn handshake_failed(side: Side, e: &HandshakeError) -> Self {
        let (reason, condition) = handshake_reason(e);
        Observation::HandshakeFailed {
            side,
            reason,
            condition,
        }
    }
}

/// Label values for a handshake failure: the kind, and the stream error
/// condition when there is one. A peer's condition is a
/// [`crate::xml::StreamCondition`], whose label is a fixed name (`other` for anything
/// outside RFC 6120), so a peer cannot mint new series.
pub fn handshake_reason(e: &HandshakeError) -> (&'static str, &'static str) {
    match e {
        HandshakeError::Io { .. } => ("io", ""),
        HandshakeError::Timeout { .. } => ("timeout", ""),
        HandshakeError::Closed { .. } => ("closed", ""),
        HandshakeError::Framing { source, .. } => ("not-xmpp", source.condition().as_str()),
        HandshakeError::BadHeader(_) => ("bad-header", ""),
        HandshakeError::Unexpected { .. } => ("unexpected", ""),
        HandshakeError::Refused { condition, .. } => ("refused", condition.as_str()),
        HandshakeError::Rejected { condition, .. } => ("rejected", condition.as_str()),
    }
}

/// Counters only metrics need, kept by the core task in [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Stanzas per [`Direction`] (stream headers and keepalives excluded).
    pub stanzas: [u64; 4],
    /// Stanza bytes per [`Direction`], as they crossed the wire.
    pub bytes: [u64; 4],
    /// By (side, reason, condition); bounded by the fixed label sets.
    pub handshake_failures: BTreeMap<(Side, &'static str, &'static str), u64>,
    /// TLS handshakes that failed, by (link, reason); bounded by the
    /// fixed reason labels.
    pub tls_handshake_failures: BTreeMap<(Side, &'static str), u64>,
    pub upstream_connect_failures: u64,
    /// Instances cut for being slow: their queue at its bound and their
    /// socket taking no bytes for `instances.stall_timeout`.
    pub members_cut_slow: u64,
    pub reloads_applied: u64,
    pub reloads_refused: u64,
}

impl Counters {
    /// One stanza of `len` bytes went `dir`.
    pub fn stanza(&mut self, dir: Direction, len: usize) {
        self.stanzas[dir.index()] += 1;
        self.bytes[dir.index()] += len as u64;
    }

    pub fn observe(&mut self, o: Observation) {
        match o {
            Observation::HandshakeFailed {
                side,
                reason,
                condition,
            } => {
                *self
                    .handshake_failures
                    .entry((side, reason, condition))
                    .or_default() += 1
            }
            Observation::TlsHandshakeFailed { side, reason } => {
                *self
                    .tls_handshake_failures
                    .entry((side, reason))
                    .or_default() += 1
            }
            Observation::UpstreamConnectFailed => self.upstream_connect_failures += 1,
            Observation::ReloadRefused => self.reloads_refused += 1,
        }
    }

    pub fn stanzas(&self, dir: Direction) -> u64 {
        self.stanzas[dir.index()]
    }

    pub fn bytes(&self, dir: Direction) -> u64 {
        self.bytes[dir.index()]
    }

    /// Handshake failures on `side`, all reasons.
    pub fn handshake_failures(&self, side: Side) -> u64 {
        self.handshake_failures
            .iter()
            .filter(|((s, _, _), _)| *s == side)
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligible_members_leave_out_the_quarantined() {
        let r = |x: &str| Member::Resource(format!("focus@auth.example.test/{x}"));
        let mut s = Status {
            pool: vec![r("a"), r("b"), Member::Instance(1), Member::Instance(2)],
            ..Status::default()
        };
        assert_eq!(
            s.eligible(),
            ByKind {
                resources: 2,
                instances: 2
            }
        );
        s.stats.quarantined.insert(r("b"));
        s.stats.quarantined.insert(Member::Instance(2));
        assert_eq!(
            s.eligible(),
            ByKind {
                resources: 1,
                instances: 1
            }
        );
        s.stats.quarantined.insert(r("a"));
        assert_eq!(s.eligible().resources, 0);
    }
}
