//! What jatproxy keeps for the XMPP server while the upstream session is
//! away, and what it drops: the policy alone, synchronous and without
//! I/O, so that it is unit-tested here. The router owns one [`Backlog`],
//! fills it when upstream is away and empties it, in order, when a new
//! session is up, so that the actions it gives the core are final. It
//! may not touch sockets, the router's tables or the clock.

use std::collections::VecDeque;

use crate::jat::Key;
use crate::rewrite::Wire;

/// What an item held for upstream is, as the router said when it made it
/// (the bytes are not looked at again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// The answer to an iq request, which must not be lost. There are at
    /// most as many as requests were pending when upstream went away (each
    /// answer ends one), plus those to requests the dying session still
    /// delivered, so they are held past the bound.
    Answer,
    /// An iq request (an instance's, or one for a client resource); sent
    /// only if it still waits for its answer under this key when upstream
    /// is back (not answered, not moved to another member meanwhile).
    Request(Key),
    /// Messages, presence and the rest: held up to the bound, then
    /// dropped and counted.
    Other,
}

/// How much the backlog holds besides answers: whichever bound is
/// reached first. Counting items alone would let 4096 of the largest
/// stanzas pin gigabytes during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// `limits.upstream_buffer`.
    pub items: usize,
    /// `limits.upstream_buffer_bytes`.
    pub bytes: usize,
}

impl Bound {
    /// `limits.upstream_buffer` and `limits.upstream_buffer_bytes`.
    pub fn of(limits: &crate::config::LimitsConfig) -> Self {
        Bound {
            items: limits.upstream_buffer,
            bytes: limits.upstream_buffer_bytes,
        }
    }

    /// A bound in items only (for tests that count stanzas).
    pub fn items(items: usize) -> Self {
        Bound {
            items,
            bytes: usize::MAX,
        }
    }
}

impl Default for Bound {
    fn default() -> Self {
        Bound::items(0)
    }
}

/// Output held for upstream, in the order it was written.
#[derive(Debug, Default)]
pub struct Backlog {
    items: VecDeque<(Wire, Class)>,
    /// Held items that count against the bound (all but answers).
    bounded: usize,
    /// Their bytes.
    bounded_bytes: usize,
    bound: Bound,
    /// Items dropped because the bound was reached, ever.
    dropped: u64,
}

impl Backlog {
    /// An empty backlog holding, besides answers, at most `bound.items`
    /// items and `bound.bytes` bytes.
    pub fn new(bound: Bound) -> Self {
        Backlog {
            bound,
            ..Backlog::default()
        }
    }

    /// A reload's new bound. Items already held stay; the new bound
    /// applies to what is held next.
    pub fn set_bound(&mut self, bound: Bound) {
        self.bound = bound;
    }

    /// The bound in items.
    pub fn cap(&self) -> usize {
        self.bound.items
    }

    /// The bound in bytes.
    pub fn byte_cap(&self) -> usize {
        self.bound.bytes
    }

    /// Bytes held now that count against the bound (answers aside).
    pub fn bounded_bytes(&self) -> usize {
        self.bounded_bytes
    }

    /// Items held now.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items dropped so far because the bound was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Keeps `wire` until upstream is back; false if it was dropped (and
    /// counted) instead. Answers are always kept: dropping one would leave
    /// a request without its one answer, and their number is bounded by
    /// the pending table, not by this. Everything else is kept up to the
    /// bound, in items and in bytes.
    pub fn hold(&mut self, wire: Wire, class: Class) -> bool {
        if class != Class::Answer {
            let bytes = self.bounded_bytes.saturating_add(wire.len());
            if self.bounded >= self.bound.items || bytes > self.bound.bytes {
                self.dropped += 1;
                return false;
            }
            self.bounded += 1;
            self.bounded_bytes = bytes;
        }
        self.items.push_back((wire, class));
        true
    }

    /// Everything held, oldest first, for a session that is up; the
    /// backlog is empty (and the bound free) afterwards.
    pub fn drain(&mut self) -> impl Iterator<Item = (Wire, Class)> + '_ {
        self.bounded = 0;
        self.bounded_bytes = 0;
        self.items.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(s: &'static str) -> Wire {
        Wire::One(bytes::Bytes::from_static(s.as_bytes()))
    }

    fn request(id: &str) -> Class {
        Class::Request(Key::ToResource {
            res: "tok".into(),
            id: id.into(),
        })
    }

    #[test]
    fn answers_are_held_past_the_bound_the_rest_up_to_it() {
        let mut b = Backlog::new(Bound::items(2));
        assert!(b.hold(wire("m1"), Class::Other));
        assert!(b.hold(wire("a1"), Class::Answer));
        assert!(b.hold(wire("r1"), request("1")));
        assert!(!b.hold(wire("m2"), Class::Other), "bound reached");
        assert!(!b.hold(wire("r2"), request("2")), "requests count too");
        for i in 0..10 {
            assert!(b.hold(wire("a"), Class::Answer), "answer {i}");
        }
        assert_eq!((b.len(), b.dropped()), (13, 2));
    }

    #[test]
    fn drain_gives_everything_in_order_and_frees_the_bound() {
        let mut b = Backlog::new(Bound::items(1));
        b.hold(wire("m1"), Class::Other);
        b.hold(wire("a1"), Class::Answer);
        b.hold(wire("m2"), Class::Other);
        let out: Vec<_> = b.drain().collect();
        assert_eq!(
            out,
            [(wire("m1"), Class::Other), (wire("a1"), Class::Answer)]
        );
        assert!(b.is_empty());
        assert!(b.hold(wire("m3"), Class::Other), "room again");
        assert_eq!(b.dropped(), 1, "the count stays");
    }

    #[test]
    fn a_new_bound_applies_to_what_is_held_next() {
        let mut b = Backlog::new(Bound::items(1));
        assert!(b.hold(wire("m1"), Class::Other));
        b.set_bound(Bound::items(3));
        assert!(b.hold(wire("m2"), Class::Other));
        assert!(b.hold(wire("m3"), Class::Other));
        assert!(!b.hold(wire("m4"), Class::Other));
        b.set_bound(Bound::items(0));
        assert!(!b.hold(wire("m5"), Class::Other));
        assert!(b.hold(wire("a"), Class::Answer));
        assert_eq!((b.len(), b.dropped()), (4, 2));
    }

    /// Bytes bound the backlog as items do: many small stanzas fit where
    /// a few large ones do not, and answers are held past it.
    #[test]
    fn the_byte_bound_is_reached_before_the_count() {
        let mut b = Backlog::new(Bound {
            items: 100,
            bytes: 10,
        });
        assert!(b.hold(wire("0123"), Class::Other));
        assert!(b.hold(wire("456789"), request("1")), "exactly at the bound");
        assert!(!b.hold(wire("x"), Class::Other), "one byte over");
        assert!(b.hold(wire("a large answer, past the bound"), Class::Answer));
        assert_eq!((b.len(), b.dropped(), b.bounded_bytes()), (3, 1, 10));
        let _ = b.drain().count();
        assert_eq!(b.bounded_bytes(), 0, "drained, the bytes are free");
        assert!(
            !b.hold(wire("eleven byte"), Class::Other),
            "larger than the bound"
        );
        assert!(b.hold(wire("ten bytes!"), Class::Other));
        b.set_bound(Bound {
            items: 100,
            bytes: 20,
        });
        assert!(b.hold(wire("ten more.."), Class::Other), "a reload's room");
        assert_eq!(b.dropped(), 2);
    }
}
