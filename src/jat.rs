//! Jabber Address Translation: the encoded resource (ENC) that lets a
//! reply find its way back through the proxy, and the table of requests
//! waiting for one.
//!
//! In `inline` mode ENC is the requester's full JID itself, byte for byte
//! what Prosody's mod_client_proxy does, so implementing clients written
//! for the module keep working and any proxy process can translate any
//! reply. In `opaque` mode ENC is a random token that only this process
//! can resolve. A requester address too long for a resourcepart gets a
//! token in either mode.
//!
//! The same ENC serves iq requests (`from='D/ENC'`) and, with
//! `client_proxy.messages`/`presence`, conversations
//! (`from='node@D/ENC'`, see [`conversation_from`]). A token lives while it
//! is used: one unused for `client_proxy.token_idle_timeout` no longer
//! resolves, so a late reply is bounced, never delivered to whoever a
//! fresh token would name; and at most `routing.pending_capacity` exist.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};
use lru::LruCache;
use rand::Rng;
use tokio::time::Instant;

use crate::config::JatMode;
use crate::hold::Trip;
use crate::jid;
use crate::pool::{InstanceId, Member};

/// Tokens start with this, which no valid JID domain does (`#` is not a
/// hostname character), so inline ENCs and tokens never collide.
pub const TOKEN_PREFIX: &str = "#jat.";

/// RFC 6122: a resourcepart is at most 1023 bytes.
pub const MAX_RESOURCE: usize = 1023;

/// A fresh unguessable token: 128 random bits.
pub fn new_token<R: Rng + ?Sized>(rng: &mut R) -> String {
    let bits: [u8; 16] = rng.random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bits))
}

/// The address a conversation's stanza comes from at a target resource:
/// `node@D/ENC` when the user wrote to `node@D` (`D/ENC` for the bare
/// domain), so the resource knows which service address was meant and
/// answers to it. `to_bare` is the bare part of the address the user
/// wrote to.
pub fn conversation_from(to_bare: &str, enc: &str) -> String {
    format!("{to_bare}/{enc}")
}

/// The ENC table: requester ⇄ token, bounded, least recently used out,
/// each token with the time it was last used.
#[derive(Debug)]
pub struct Jat {
    mode: JatMode,
    tokens: LruCache<String, (String, Instant)>,
    by_jid: HashMap<String, String>,
    idle: Duration,
}

impl Jat {
    pub fn new(mode: JatMode, capacity: NonZeroUsize, idle: Duration) -> Self {
        Jat {
            mode,
            tokens: LruCache::new(capacity),
            by_jid: HashMap::new(),
            idle,
        }
    }

    /// A reload's `client_proxy.token_idle_timeout`: applies to the next
    /// encode or decode (a shorter one ends tokens idle that long).
    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    fn expired(&self, last: Instant, now: Instant) -> bool {
        now.saturating_duration_since(last) > self.idle
    }

    pub fn mode(&self) -> JatMode {
        self.mode
    }

    /// ENC for a requester. A requester keeps its token while it stays in
    /// the table and is used within the idle timeout, so the implementing
    /// client sees one stable address per requester in both modes; an
    /// idle one is replaced by a fresh token (the old one stays dead).
    pub fn encode<R: Rng + ?Sized>(
        &mut self,
        requester: &str,
        rng: &mut R,
        now: Instant,
    ) -> String {
        if self.mode == JatMode::Inline
            && requester.len() <= MAX_RESOURCE
            && !requester.starts_with(TOKEN_PREFIX)
        {
            return requester.to_owned();
        }
        if let Some(t) = self.by_jid.get(requester).cloned() {
            let live = self
                .tokens
                .peek(&t)
                .is_some_and(|(_, last)| !self.expired(*last, now));
            if live {
                if let Some((_, last)) = self.tokens.get_mut(&t) {
                    *last = now;
                }
                return t;
            }
            self.tokens.pop(&t);
            self.by_jid.remove(requester);
        }
        let token = new_token(rng);
        if let Some((_, (old_jid, _))) =
            self.tokens.push(token.clone(), (requester.to_owned(), now))
        {
            self.by_jid.remove(&old_jid);
        }
        self.by_jid.insert(requester.to_owned(), token.clone());
        token
    }

    /// The requester an ENC stands for. Tokens resolve while they are in
    /// the table and not idle past the timeout, and each use renews them;
    /// in inline mode anything else is the address itself.
    pub fn decode(&mut self, enc: &str, now: Instant) -> Option<String> {
        if enc.starts_with(TOKEN_PREFIX) {
            let idle = self.idle;
            let (jid, last) = self.tokens.get_mut(enc)?;
            if now.saturating_duration_since(*last) > idle {
                return None;
            }
            *last = now;
            return Some(jid.clone());
        }
        match self.mode {
            JatMode::Inline => Some(enc.to_owned()),
            JatMode::Opaque => None,
        }
    }

    /// The prepared form of an inline ENC written back by a member, when
    /// it differs from what was written (`ALICE@EXAMPLE.TEST/phone`,
    /// `alice@example.test./phone` → `alice@example.test/phone`): the
    /// module `jid_prep`s the ENC it decodes, so a member may write the
    /// requester any way that prepares to it. `None` for tokens (opaque
    /// by design: matched exactly), in opaque mode, for what is no JID,
    /// and for what is already prepared.
    pub fn prepared(&self, enc: &str) -> Option<String> {
        if self.mode != JatMode::Inline || enc.starts_with(TOKEN_PREFIX) {
            return None;
        }
        jid::validate(enc).filter(|p| p != enc)
    }
}

/// How a reply is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A reply arriving from upstream addressed to `domain/res` with this
    /// id: requests forwarded to client resources (res = ENC) and
    /// requests started by instances (res = token).
    ToResource { res: String, id: String },
    /// A reply an instance sends to `requester` for a request forwarded
    /// to it unchanged.
    InstanceReply { requester: String, id: String },
    /// A reply from `peer` to the bare domain, for a request a target
    /// resource started.
    PeerReply { peer: String, id: String },
}

/// A [`Key`] borrowed from a stanza being routed: what the reply path
/// looks up, so it copies nothing to ask. Hashes and compares as the
/// `Key` it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRef<'a> {
    ToResource { res: &'a str, id: &'a str },
    InstanceReply { requester: &'a str, id: &'a str },
    PeerReply { peer: &'a str, id: &'a str },
}

impl Key {
    pub fn borrowed(&self) -> KeyRef<'_> {
        match self {
            Key::ToResource { res, id } => KeyRef::ToResource { res, id },
            Key::InstanceReply { requester, id } => KeyRef::InstanceReply { requester, id },
            Key::PeerReply { peer, id } => KeyRef::PeerReply { peer, id },
        }
    }
}

/// Who is waiting for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// An outside requester's request, forwarded to `member`.
    Inbound {
        requester: String,
        /// The `to` the requester used: the reply comes `from` it.
        orig_to: String,
        member: Member,
        /// Where it has been, and what it needs to go elsewhere.
        trip: Trip,
    },
    /// A request a target resource sent to `domain/ENC`, forwarded to `peer`.
    FromTarget {
        resource: String,
        /// `domain/ENC`, where the resource sent it: the reply comes from it.
        orig_to: String,
        peer: String,
    },
    /// A request an instance started, sent upstream from `domain/token`.
    FromInstance {
        instance: InstanceId,
        /// The instance's own `from`, restored as the reply's `to`.
        orig_from: String,
        peer: String,
    },
}

impl Waiting {
    /// The pool member whose loss leaves this request without an answer.
    pub fn member(&self) -> Option<&Member> {
        match self {
            Waiting::Inbound { member, .. } => Some(member),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub waiting: Waiting,
    pub deadline: Instant,
}

/// Requests in flight. Bounded: inserting into a full table gives up the
/// oldest request, which the caller answers with an error.
///
/// Each key is stored once, in its slot; the hash index holds only slot
/// numbers, so an insert copies no key and allocates nothing once the
/// table has grown (an `lru` node, a tree node and a second copy of the
/// key cost three allocations per request before). Insertion order and
/// deadline order are queues of (insertion number, slot) whose stale
/// entries (the slot since freed or reused) are skipped: the heads are
/// kept live after every removal, and a queue grown past twice the table
/// is compacted. Deadlines are not in insertion order (a request sent to
/// another member keeps the time it had left), so they have a heap.
#[derive(Debug)]
pub struct Pending {
    capacity: usize,
    hasher: DefaultHashBuilder,
    index: HashTable<usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// (insertion number, slot), oldest first.
    order: VecDeque<(u64, usize)>,
    /// (deadline, insertion number, slot), earliest first.
    deadlines: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    inserted: u64,
    len: usize,
}

#[derive(Debug)]
struct Slot {
    key: Key,
    entry: Entry,
    n: u64,
}

/// Where an entry found by [`Pending::find`] sits, to read or remove it
/// without a second lookup. Valid until the table next changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found(usize);

impl Pending {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Pending {
            capacity: capacity.get(),
            hasher: DefaultHashBuilder::default(),
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            inserted: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    fn live(&self, n: u64, i: usize) -> bool {
        self.slot(i).is_some_and(|s| s.n == n)
    }

    /// The slot holding `key`: one hash, one probe. Keys are hashed in
    /// their borrowed form, so a key can be looked up without being built.
    pub fn find(&self, key: KeyRef<'_>) -> Option<Found> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.index
            .find(hash, |&i| {
                slots
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.key.borrowed() == key)
            })
            .map(|&i| Found(i))
    }

    /// The entry at a slot [`Pending::find`] returned.
    pub fn at(&self, found: Found) -> Option<&Entry> {
        self.slot(found.0).map(|s| &s.entry)
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.find(key.borrowed()).is_some()
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.find(key.borrowed()).and_then(|f| self.at(f))
    }

    /// Inserts; returns the entry given up to make room, if any. The key
    /// must not be present (callers check for duplicates first; one that
    /// is is replaced, and that is not giving one up for room).
    pub fn insert(&mut self, key: Key, entry: Entry) -> Option<(Key, Entry)> {
        let replaced = self.remove(&key).is_some();
        let given_up = if !replaced && self.len >= self.capacity {
            self.pop_oldest()
        } else {
            None
        };
        self.inserted += 1;
        let n = self.inserted;
        let hash = self.hasher.hash_one(key.borrowed());
        let i = self.free.pop().unwrap_or(self.slots.len());
        self.deadlines.push(Reverse((entry.deadline, n, i)));
        self.order.push_back((n, i));
        let slot = Some(Slot { key, entry, n });
        match self.slots.get_mut(i) {
            Some(free) => *free = slot,
            None => self.slots.push(slot),
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, i, |&j| {
            slots
                .get(j)
                .and_then(Option::as_ref)
                .map_or(0, |s| hasher.hash_one(s.key.borrowed()))
        });
        self.len += 1;
        given_up
    }

    pub fn remove(&mut self, key: &Key) -> Option<Entry> {
        let found = self.find(key.borrowed())?;
        self.take(found).map(|(_, e)| e)
    }

    /// Removes the entry at a slot [`Pending::find`] returned.
    pub fn take(&mut self, found: Found) -> Option<(Key, Entry)> {
        let i = found.0;
        let slot = self.slots.get_mut(i)?.take()?;
        let hash = self.hasher.hash_one(slot.key.borrowed());
        if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        self.free.push(i);
        self.len -= 1;
        self.settle();
        Some((slot.key, slot.entry))
    }

    /// Drops stale heads of both queues, so their heads are live, and
    /// compacts a queue grown past twice the table (replies removed out
    /// of order leave their entries behind).
    fn settle(&mut self) {
        while let Some(&(n, i)) = self.order.front() {
            if self.live(n, i) {
                break;
            }
            self.order.pop_front();
        }
        while let Some(&Reverse((_, n, i))) = self.deadlines.peek() {
            if self.live(n, i) {
                break;
            }
            self.deadlines.pop();
        }
        let bound = 2 * self.len + 64;
        if self.order.len() > bound {
            let slots = &self.slots;
            self.order.retain(|&(n, i)| {
                slots
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.n == n)
            });
        }
        if self.deadlines.len() > bound {
            let slots = &self.slots;
            self.deadlines.retain(|&Reverse((_, n, i))| {
                slots
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.n == n)
            });
        }
    }

    /// Removes and returns the entry inserted first (to make room).
    pub fn pop_oldest(&mut self) -> Option<(Key, Entry)> {
        let &(_, i) = self.order.front()?;
        self.take(Found(i))
    }

    /// Removes and returns the entry whose deadline is earliest, if it
    /// has passed.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(Key, Entry)> {
        let &Reverse((deadline, _, i)) = self.deadlines.peek()?;
        if deadline > now {
            return None;
        }
        self.take(Found(i))
    }

    /// Brings every deadline later than `latest` forward to it (a reload
    /// shortened the timeout): none waits longer than the new setting.
    pub fn clamp_deadlines(&mut self, latest: Instant) {
        self.deadlines.clear();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(s) = s {
                s.entry.deadline = s.entry.deadline.min(latest);
                self.deadlines.push(Reverse((s.entry.deadline, s.n, i)));
            }
        }
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|&Reverse((d, _, _))| d)
    }

    /// Removes and returns every entry matching `pred` (a member went
    /// away), oldest first.
    pub fn drain_where(&mut self, mut pred: impl FnMut(&Waiting) -> bool) -> Vec<(Key, Entry)> {
        let mut found: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (s, i)))
            .filter(|(s, _)| pred(&s.entry.waiting))
            .map(|(s, i)| (s.n, i))
            .collect();
        found.sort_unstable();
        found
            .into_iter()
            .filter_map(|(_, i)| self.take(Found(i)))
            .collect()
    }

    /// Removes and returns everything (shutdown).
    pub fn drain_all(&mut self) -> Vec<(Key, Entry)> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(kv) = self.pop_oldest() {
            out.push(kv);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::Duration;

    const IDLE: Duration = Duration::from_secs(3600);

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("nonzero")
    }

    #[test]
    fn inline_is_the_jid_itself() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut jat = Jat::new(JatMode::Inline, cap(4), IDLE);
        let now = Instant::now();
        assert_eq!(
            jat.encode("alice@example.test/phone", &mut rng, now),
            "alice@example.test/phone"
        );
        assert_eq!(
            jat.decode("alice@example.test/phone", now).as_deref(),
            Some("alice@example.test/phone")
        );
    }

    #[test]
    fn long_requesters_get_tokens_even_inline() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut jat = Jat::new(JatMode::Inline, cap(4), IDLE);
        let now = Instant::now();
        let long = format!("a@example.test/{}", "r".repeat(1100));
        let t = jat.encode(&long, &mut rng, now);
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == TOKEN_PREFIX.len() + 32);
        assert_eq!(
            jat.encode(&long, &mut rng, now),
            t,
            "stable while in the table"
        );
        assert_eq!(jat.decode(&t, now), Some(long));
    }

    #[test]
    fn opaque_tokens_resolve_until_evicted() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut jat = Jat::new(JatMode::Opaque, cap(2), IDLE);
        let now = Instant::now();
        let a = jat.encode("a@x/1", &mut rng, now);
        let b = jat.encode("b@x/1", &mut rng, now);
        assert_ne!(a, b);
        assert_eq!(
            jat.decode("a@x/1", now),
            None,
            "no inline decoding in opaque mode"
        );
        assert_eq!(jat.decode(&b, now).as_deref(), Some("b@x/1"));
        assert_eq!(jat.decode(&a, now).as_deref(), Some("a@x/1"));
        let _c = jat.encode("c@x/1", &mut rng, now);
        assert_eq!(jat.decode(&b, now), None, "least recently used evicted");
        assert_eq!(jat.decode(&a, now).as_deref(), Some("a@x/1"));
        // A re-encoded evicted requester gets a new token.
        assert_ne!(jat.encode("b@x/1", &mut rng, now), b);
    }

    #[test]
    fn tokens_die_when_idle_and_live_while_used() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut jat = Jat::new(JatMode::Opaque, cap(4), Duration::from_secs(60));
        let t0 = Instant::now();
        let a = jat.encode("a@x/1", &mut rng, t0);
        // Used every 50 s, it lives past the timeout counted from creation.
        let t1 = t0 + Duration::from_secs(50);
        assert_eq!(jat.decode(&a, t1).as_deref(), Some("a@x/1"));
        let t2 = t1 + Duration::from_secs(50);
        assert_eq!(jat.encode("a@x/1", &mut rng, t2), a, "renewed by use");
        // Idle past the timeout: dead, and a fresh token replaces it.
        let t3 = t2 + Duration::from_secs(61);
        assert_eq!(jat.decode(&a, t3), None);
        let fresh = jat.encode("a@x/1", &mut rng, t3);
        assert_ne!(fresh, a);
        assert_eq!(jat.decode(&a, t3), None, "the old token stays dead");
        assert_eq!(jat.decode(&fresh, t3).as_deref(), Some("a@x/1"));
        // Exactly the timeout is still alive.
        let t4 = t3 + Duration::from_secs(60);
        assert_eq!(jat.decode(&fresh, t4).as_deref(), Some("a@x/1"));
    }

    #[test]
    fn conversation_from_keeps_the_node_written_to() {
        assert_eq!(
            conversation_from("helpdesk@d.test", "a@x/1"),
            "helpdesk@d.test/a@x/1"
        );
        assert_eq!(conversation_from("d.test", "#jat.00"), "d.test/#jat.00");
    }

    #[test]
    fn prepared_is_only_for_inline_encs_written_differently() {
        let mut rng = StdRng::seed_from_u64(3);
        let jat = Jat::new(JatMode::Inline, cap(4), IDLE);
        for enc in [
            "ALICE@EXAMPLE.TEST/phone",
            "alice@example.test./phone",
            "Alice@Example.Test./phone",
        ] {
            assert_eq!(
                jat.prepared(enc).as_deref(),
                Some("alice@example.test/phone"),
                "{enc}"
            );
        }
        // Already prepared, no JID, the resource's own case: nothing to try.
        assert_eq!(jat.prepared("alice@example.test/phone"), None);
        assert_eq!(jat.prepared("alice@example.test/PHONE"), None);
        assert_eq!(jat.prepared("a b@example.test"), None);
        // Tokens stay exact in either mode.
        let token = new_token(&mut rng);
        let hex = token.trim_start_matches(TOKEN_PREFIX).to_uppercase();
        assert_eq!(jat.prepared(&format!("{TOKEN_PREFIX}{hex}")), None);
        // Nor is a token written in upper case a JID to prepare into one.
        assert_eq!(jat.prepared(&token.to_uppercase()), None);
        let opaque = Jat::new(JatMode::Opaque, cap(4), IDLE);
        assert_eq!(opaque.prepared("ALICE@EXAMPLE.TEST/phone"), None);
    }

    fn entry(deadline: Instant) -> Entry {
        Entry {
            waiting: Waiting::Inbound {
                requester: "a@x/1".into(),
                orig_to: "d".into(),
                member: Member::Instance(1),
                trip: Trip::default(),
            },
            deadline,
        }
    }

    fn key(id: &str) -> Key {
        Key::ToResource {
            res: "r".into(),
            id: id.into(),
        }
    }

    #[test]
    fn pending_evicts_oldest_and_expires_in_order() {
        let t0 = Instant::now();
        let mut p = Pending::new(cap(2));
        assert!(p
            .insert(key("1"), entry(t0 + Duration::from_secs(1)))
            .is_none());
        assert!(p
            .insert(key("2"), entry(t0 + Duration::from_secs(2)))
            .is_none());
        let (k, _) = p
            .insert(key("3"), entry(t0 + Duration::from_secs(3)))
            .expect("evicted");
        assert_eq!(k, key("1"));
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(p.pop_expired(t0 + Duration::from_millis(1999)).is_none());
        assert_eq!(
            p.pop_expired(t0 + Duration::from_secs(2)).map(|kv| kv.0),
            Some(key("2"))
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn pending_expires_by_deadline_not_insertion() {
        let t0 = Instant::now();
        let mut p = Pending::new(cap(4));
        p.insert(key("1"), entry(t0 + Duration::from_secs(30)));
        // Sent to another member with the time it had left.
        p.insert(key("2"), entry(t0 + Duration::from_secs(5)));
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(
            p.pop_expired(t0 + Duration::from_secs(5)).map(|kv| kv.0),
            Some(key("2"))
        );
        assert!(p.pop_expired(t0 + Duration::from_secs(29)).is_none());
        assert_eq!(p.pop_oldest().map(|kv| kv.0), Some(key("1")));
        assert!(p.is_empty() && p.next_deadline().is_none());
    }

    #[test]
    fn drain_where_takes_only_matching() {
        let t0 = Instant::now();
        let mut p = Pending::new(cap(8));
        p.insert(key("1"), entry(t0));
        let mut other = entry(t0);
        other.waiting = Waiting::FromInstance {
            instance: 2,
            orig_from: "d".into(),
            peer: "p".into(),
        };
        p.insert(key("2"), other);
        let drained = p.drain_where(|w| w.member() == Some(&Member::Instance(1)));
        assert_eq!(drained.len(), 1);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn pending_reuses_slots_and_keeps_both_orders() {
        // Replies removed out of order free slots that later requests
        // reuse: the oldest and the earliest stay right, and the queues
        // stay within twice the table.
        let t0 = Instant::now();
        let mut p = Pending::new(cap(64));
        for round in 0..50u64 {
            for j in 0..4u64 {
                let id = format!("{round}-{j}");
                let d = t0 + Duration::from_secs(1000 - round * 4 - j);
                assert!(p.insert(key(&id), entry(d)).is_none());
            }
            // Answered out of order, all but the first of each round.
            for j in [3u64, 1, 2] {
                assert!(p.remove(&key(&format!("{round}-{j}"))).is_some());
            }
            assert!(p.order.len() <= 2 * p.len() + 64);
            assert!(p.deadlines.len() <= 2 * p.len() + 64);
        }
        assert_eq!(p.len(), 50);
        assert!(p.slots.len() <= 54, "freed slots are reused");
        assert_eq!(
            p.get(&key("49-0")).map(|e| e.deadline),
            Some(t0 + Duration::from_secs(804))
        );
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(804)));
        assert_eq!(p.pop_oldest().map(|kv| kv.0), Some(key("0-0")));
        assert_eq!(
            p.pop_expired(t0 + Duration::from_secs(804)).map(|kv| kv.0),
            Some(key("49-0"))
        );
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(808)));
        let rest: Vec<Key> = p.drain_all().into_iter().map(|kv| kv.0).collect();
        let want: Vec<Key> = (1..49).map(|r| key(&format!("{r}-0"))).collect();
        assert_eq!(rest, want, "insertion order");
    }
}
