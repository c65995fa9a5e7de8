//! Conversations with the client pool (issue 14): which target resource
//! each user talks to, and who is told when the domain comes and goes.
//!
//! Pure and bounded, with no clock: the router asks, this remembers.
//!
//! - **Sticky resources.** One entry per sender bare JID, shared by
//!   messages and presence, so a conversation stays on one resource while
//!   that resource is online. The entry names the resource's pool session,
//!   not just its JID: a resource that leaves and comes back is a new
//!   session, and the next stanza picks again (maybe the same one).
//! - **Presence subscribers.** Users who subscribed to the domain or
//!   probed it during this process's lifetime (the server probes on every
//!   user login, so the set re-learns itself after a restart; nothing is
//!   stored). They are told when the pool goes empty or non-empty.
//!
//! - **Held messages.** A user's `chat`, `normal` or `groupchat` message
//!   that finds no resource online waits for one (`routing.hold_when_empty`),
//!   in arrival order, then goes to the first resource that joins or gets
//!   `service-unavailable` when its hold ends.
//!
//! All are bounded: a flood of senders cannot grow them. Sticky entries
//! and subscribers go least recently used first (a forgotten sender is
//! re-picked, a forgotten subscriber learns the domain's presence on its
//! next login probe); the oldest held message is given up for room.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use lru::LruCache;
use tokio::time::Instant;

use crate::pool::Session;
use crate::xml::frame::Stanza;

/// A user's message waiting for a resource of the target.
#[derive(Debug)]
pub struct HeldMessage {
    /// The message as it came (its own copy of the bytes).
    pub stanza: Box<Stanza>,
    /// The sender, as the server stamped it: who gets the error if no
    /// resource comes in time.
    pub sender: String,
    /// `node@D/ENC`, made when it was held: its `from` at the resource.
    pub from: String,
    pub until: Instant,
}

/// Sticky resources and presence subscribers.
#[derive(Debug)]
pub struct Conversations {
    /// Sender bare JID → (target resource full JID, its pool session).
    sticky: LruCache<String, (String, Session)>,
    /// (user bare JID, service address it subscribed to: `D` or
    /// `node@D`): who to tell about the domain's presence, and from where.
    subscribers: LruCache<(String, String), ()>,
    /// Whether subscribers were last told the domain is available (the
    /// pool had a member); starts false, as no one was told anything.
    shown: bool,
    /// Messages waiting for a resource, oldest first.
    held: VecDeque<HeldMessage>,
    capacity: NonZeroUsize,
}

impl Conversations {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Conversations {
            sticky: LruCache::new(capacity),
            subscribers: LruCache::new(capacity),
            shown: false,
            held: VecDeque::new(),
            capacity,
        }
    }

    /// Keeps `m` until a resource comes; returns the oldest held message
    /// when there was no room for another (its sender gets an error).
    pub fn hold(&mut self, m: HeldMessage) -> Option<HeldMessage> {
        let out = (self.held.len() >= self.capacity.get())
            .then(|| self.held.pop_front())
            .flatten();
        self.held.push_back(m);
        out
    }

    /// Every held message, oldest first (a resource joined).
    pub fn take_held(&mut self) -> Vec<HeldMessage> {
        self.held.drain(..).collect()
    }

    /// The held messages whose hold ended by `now`, oldest first.
    pub fn take_expired(&mut self, now: Instant) -> Vec<HeldMessage> {
        let (gone, kept) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|m| m.until <= now);
        self.held = kept;
        gone.into()
    }

    /// When the next hold ends.
    pub fn next_held_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|m| m.until).min()
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The resource `sender` (a bare JID) talks to, while
    /// `alive(resource, session)` says it is still that session in the
    /// pool; `None` means pick one and [`Conversations::stick`] to it.
    pub fn sticky(
        &mut self,
        sender: &str,
        alive: impl Fn(&str, Session) -> bool,
    ) -> Option<String> {
        let (res, session) = self.sticky.get(sender)?;
        alive(res, *session).then(|| res.clone())
    }

    /// `sender` talks to `picked` from now on; `None` (no resource
    /// online) forgets it.
    pub fn stick(&mut self, sender: &str, picked: Option<(String, Session)>) {
        match picked {
            Some(p) => {
                self.sticky.put(sender.to_owned(), p);
            }
            None => {
                self.sticky.pop(sender);
            }
        }
    }

    /// How many senders have a sticky resource.
    pub fn len(&self) -> usize {
        self.sticky.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sticky.is_empty()
    }

    /// Forgets every conversation (messages and presence turned off).
    pub fn clear(&mut self) {
        self.sticky.clear();
        self.subscribers.clear();
    }

    /// Forgets every subscriber (presence turned off by a reload).
    pub fn forget_subscribers(&mut self) {
        self.subscribers.clear();
    }

    /// `user` (a bare JID) subscribed to `address` or probed it: it is
    /// told from now on.
    pub fn subscribe(&mut self, user: &str, address: &str) {
        self.subscribers
            .put((user.to_owned(), address.to_owned()), ());
    }

    /// `user` unsubscribed from `address`: it is told no more.
    pub fn unsubscribe(&mut self, user: &str, address: &str) {
        self.subscribers.pop(&(user.to_owned(), address.to_owned()));
    }

    pub fn is_subscriber(&self, user: &str, address: &str) -> bool {
        self.subscribers
            .contains(&(user.to_owned(), address.to_owned()))
    }

    /// Whether the pool having a member (`available`) is news to the
    /// subscribers; then the (user, address) pairs to tell, most recent
    /// first, and it is recorded as told.
    pub fn pool_changed(&mut self, available: bool) -> Option<Vec<(String, String)>> {
        if available == self.shown {
            return None;
        }
        self.shown = available;
        Some(self.subscribers.iter().map(|(u, _)| u.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("nonzero")
    }

    /// `resource` with the pool given as (JID, session) pairs, picking the
    /// first member; returns the resource and whether it picked.
    fn ask(
        c: &mut Conversations,
        sender: &str,
        pool: &[(&str, Session)],
    ) -> (Option<String>, bool) {
        if let Some(r) = c.sticky(sender, |res, s| pool.contains(&(res, s))) {
            return (Some(r), false);
        }
        let picked = pool.first().map(|(r, s)| ((*r).to_owned(), *s));
        c.stick(sender, picked.clone());
        (picked.map(|p| p.0), true)
    }

    #[test]
    fn a_sender_sticks_while_its_resource_is_the_same_session() {
        let mut c = Conversations::new(cap(8));
        let pool = [("t@x/a", 1), ("t@x/b", 2)];
        assert_eq!(ask(&mut c, "u@x", &pool), (Some("t@x/a".into()), true));
        // Another member first now: the sender stays on a.
        let pool = [("t@x/b", 2), ("t@x/a", 1)];
        assert_eq!(ask(&mut c, "u@x", &pool), (Some("t@x/a".into()), false));
        // a left: re-picked.
        let pool = [("t@x/b", 2)];
        assert_eq!(ask(&mut c, "u@x", &pool), (Some("t@x/b".into()), true));
        // b came back as a new session, a is back first: picks again.
        let pool = [("t@x/a", 3), ("t@x/b", 4)];
        assert_eq!(ask(&mut c, "u@x", &pool), (Some("t@x/a".into()), true));
        // Nobody online: forgotten.
        assert_eq!(ask(&mut c, "u@x", &[]), (None, true));
        assert!(c.is_empty());
    }

    #[test]
    fn senders_are_bounded_least_recently_used_out() {
        let mut c = Conversations::new(cap(2));
        let pool = [("t@x/a", 1)];
        ask(&mut c, "u1@x", &pool);
        ask(&mut c, "u2@x", &pool);
        ask(&mut c, "u1@x", &pool);
        ask(&mut c, "u3@x", &pool);
        assert_eq!(c.len(), 2);
        assert!(!ask(&mut c, "u1@x", &pool).1, "u1 kept");
        assert!(ask(&mut c, "u2@x", &pool).1, "u2 forgotten");
    }

    fn held(id: &str, until: Instant) -> HeldMessage {
        let xml = format!("<message id='{id}' to='d' from='u@x/1'/>");
        HeldMessage {
            stanza: Box::new(crate::xml::parse_one(xml.as_bytes()).expect("frames")),
            sender: "u@x/1".into(),
            from: "d/u@x/1".into(),
            until,
        }
    }

    #[test]
    fn held_messages_are_bounded_and_expire_in_order() {
        let t0 = Instant::now();
        let s = std::time::Duration::from_secs;
        let mut c = Conversations::new(cap(2));
        assert!(c.hold(held("1", t0 + s(1))).is_none());
        assert!(c.hold(held("2", t0 + s(2))).is_none());
        let out = c.hold(held("3", t0 + s(3))).expect("room made");
        assert_eq!(out.stanza.id(), Some("1"));
        assert_eq!(c.next_held_deadline(), Some(t0 + s(2)));
        assert!(c.take_expired(t0 + s(1)).is_empty());
        let gone = c.take_expired(t0 + s(2));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].stanza.id(), Some("2"));
        assert_eq!(c.held_len(), 1);
        let rest = c.take_held();
        assert_eq!(rest[0].stanza.id(), Some("3"));
        assert_eq!(c.next_held_deadline(), None);
    }

    #[test]
    fn subscribers_are_told_only_on_a_change() {
        let mut c = Conversations::new(cap(2));
        let pair = |u: &str, a: &str| (u.to_owned(), a.to_owned());
        assert_eq!(c.pool_changed(false), None, "nothing told yet");
        c.subscribe("u1@x", "d");
        c.subscribe("u2@x", "d");
        c.subscribe("u2@x", "help@d");
        assert!(!c.is_subscriber("u1@x", "d"), "bounded");
        assert!(c.is_subscriber("u2@x", "d"));
        assert_eq!(
            c.pool_changed(true),
            Some(vec![pair("u2@x", "help@d"), pair("u2@x", "d")])
        );
        assert_eq!(c.pool_changed(true), None);
        c.unsubscribe("u2@x", "d");
        assert_eq!(c.pool_changed(false), Some(vec![pair("u2@x", "help@d")]));
        c.clear();
        assert_eq!(c.pool_changed(true), Some(vec![]));
    }
}
