//! Requests between members: where an inbound request has been (its
//! [`Trip`]), and the queue of those waiting for an eligible member (the
//! [`Hold`], `routing.hold_when_empty`).
//!
//! Pure bookkeeping, no policy: the router decides what enters, leaves
//! and is answered; this module keeps arrival order and deadlines.

use std::collections::{BTreeMap, HashSet, VecDeque};

use bytes::Bytes;
use tokio::time::Instant;

use crate::pool::{Member, Session};
use crate::rewrite::Wire;
use crate::xml::frame::Stanza;

/// What an inbound request carries from member to member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trip {
    /// The request as the requester sent it, in a buffer of its own (so a
    /// request waiting here does not pin the whole read buffer it came
    /// in); `None` when it will not be sent again (no re-dispatch for its
    /// type, no `retry_on`).
    pub request: Option<Box<Stanza>>,
    /// A `get` (a `set` may already have been applied by a member that
    /// left: re-dispatched only with `redispatch = "all"`).
    pub get: bool,
    /// Only instances may serve it (`room@D` with a listener configured).
    pub instances_only: bool,
    /// ENC for the requester, once it went or may go to a client resource.
    pub enc: Option<String>,
    /// Sessions that had it: none gets it twice.
    pub tried: Vec<Session>,
    /// Members that had it and were lost: their late answers and the
    /// server's bounces from their address are dropped, not delivered.
    pub lost: Vec<Member>,
    /// Other members tried after refusals (`routing.retry_limit`).
    pub retries: u32,
    /// The last refusal, as the requester gets it if no member is left.
    pub refusal: Option<Wire>,
}

impl Trip {
    /// Whether it reached a member (and was answered by none).
    pub fn reached(&self) -> bool {
        !self.tried.is_empty()
    }
}

/// A copy of `st` in a buffer of its own.
pub fn own(st: &Stanza) -> Box<Stanza> {
    let mut copy = st.clone();
    copy.bytes = Bytes::copy_from_slice(&st.bytes);
    Box::new(copy)
}

/// An inbound request not with a member now: its answer's addresses and
/// where it has been.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The requester, as the server stamped it.
    pub requester: String,
    /// The address it was sent to: the `from` of its answer.
    pub orig_to: String,
    pub id: String,
    /// The request's own deadline, once a member had it: it keeps the
    /// time it has left. A new request gets `iq_timeout` when sent.
    pub deadline: Option<Instant>,
    pub trip: Trip,
}

/// A request waiting for an eligible member.
#[derive(Debug, Clone)]
pub struct Held {
    pub ask: Ask,
    /// When the hold ends.
    pub until: Instant,
}

/// The requests waiting for an eligible member, in arrival order.
#[derive(Debug, Default)]
pub struct Hold {
    queue: VecDeque<Held>,
    /// (requester, id) of every request here: a second request with the
    /// same pair would be answered under the same key.
    ids: HashSet<(String, String)>,
    /// Hold ends → how many end then: the core looks at the earliest after
    /// every batch, and making room pops one at a time, so neither may
    /// walk the queue.
    ends: BTreeMap<Instant, usize>,
}

impl Hold {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a request of `requester` with `id` waits here.
    pub fn contains(&self, requester: &str, id: &str) -> bool {
        // Asked for every request routed, nearly always with nothing
        // held: then without making the owned pair the set is keyed by.
        !self.ids.is_empty() && self.ids.contains(&(requester.to_owned(), id.to_owned()))
    }

    pub fn push(&mut self, h: Held) {
        self.ids.insert((h.ask.requester.clone(), h.ask.id.clone()));
        *self.ends.entry(h.until).or_default() += 1;
        self.queue.push_back(h);
    }

    /// The request that has waited longest.
    pub fn pop_oldest(&mut self) -> Option<Held> {
        let h = self.queue.pop_front()?;
        self.forget(&h);
        Some(h)
    }

    fn forget(&mut self, h: &Held) {
        if let Some(n) = self.ends.get_mut(&h.until) {
            *n -= 1;
            if *n == 0 {
                self.ends.remove(&h.until);
            }
        }
        self.ids
            .remove(&(h.ask.requester.clone(), h.ask.id.clone()));
    }

    /// Takes out, in order, every request `pred` accepts.
    pub fn take_where(&mut self, mut pred: impl FnMut(&Held) -> bool) -> Vec<Held> {
        let (taken, kept): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|h| pred(h));
        self.queue = kept;
        for h in &taken {
            self.forget(h);
        }
        taken.into()
    }

    /// Takes out every request whose hold is over at `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Held> {
        if self.next_deadline().is_none_or(|d| d > now) {
            return Vec::new();
        }
        self.take_where(|h| h.until <= now)
    }

    /// When the next hold ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ends.keys().next().copied()
    }

    /// Takes out everything (shutdown).
    pub fn drain_all(&mut self) -> Vec<Held> {
        self.ids.clear();
        self.ends.clear();
        std::mem::take(&mut self.queue).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn held(id: &str, until: Instant) -> Held {
        Held {
            ask: Ask {
                requester: "a@x/1".into(),
                orig_to: "d".into(),
                id: id.into(),
                deadline: None,
                trip: Trip::default(),
            },
            until,
        }
    }

    #[test]
    fn keeps_order_and_expires_out_of_order() {
        let t0 = Instant::now();
        let mut h = Hold::default();
        h.push(held("1", t0 + Duration::from_secs(5)));
        h.push(held("2", t0 + Duration::from_secs(1)));
        h.push(held("3", t0 + Duration::from_secs(9)));
        assert!(h.contains("a@x/1", "2"));
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_secs(1)));
        let gone = h.take_expired(t0 + Duration::from_secs(5));
        let ids: Vec<_> = gone.iter().map(|x| x.ask.id.as_str()).collect();
        assert_eq!(ids, ["1", "2"]);
        assert!(!h.contains("a@x/1", "2"));
        assert_eq!(h.pop_oldest().map(|x| x.ask.id), Some("3".into()));
        assert!(h.is_empty());
    }

    #[test]
    fn own_copies_into_a_buffer_of_its_own() {
        let st =
            crate::xml::parse_one(b"<iq type='get' id='1' to='d' from='a@x/1'/>").expect("frames");
        let copy = own(&st);
        assert_eq!(copy.bytes, st.bytes);
        assert_ne!(copy.bytes.as_ptr(), st.bytes.as_ptr());
        assert_eq!(copy.id(), Some("1"));
    }
}
