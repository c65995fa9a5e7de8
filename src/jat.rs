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

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::time::Duration;

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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
/// Entries are never promoted, so the LRU order is the insertion order
/// and the entry given up for room is the one inserted first. Deadlines
/// are not in that order (a request sent to another member keeps the
/// time it had left), so they have their own index.
#[derive(Debug)]
pub struct Pending {
    table: LruCache<Key, (Entry, u64)>,
    /// (deadline, insertion number) → key, earliest first.
    deadlines: BTreeMap<(Instant, u64), Key>,
    inserted: u64,
}

impl Pending {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Pending {
            table: LruCache::new(capacity),
            deadlines: BTreeMap::new(),
            inserted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.table.contains(key)
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.table.peek(key).map(|(e, _)| e)
    }

    /// Inserts; returns the entry given up to make room, if any. The key
    /// must not be present (callers check for duplicates first).
    pub fn insert(&mut self, key: Key, entry: Entry) -> Option<(Key, Entry)> {
        self.inserted += 1;
        let n = self.inserted;
        self.deadlines.insert((entry.deadline, n), key.clone());
        let (old_key, (old, old_n)) = self.table.push(key, (entry, n))?;
        self.deadlines.remove(&(old.deadline, old_n));
        // `push` also returns the entry it replaced under the same key
        // (which callers rule out): that one was not given up for room.
        // A key given up for room is no longer in the table; one replaced
        // is (asked only here, off the common path, where a copy of every
        // key inserted cost two allocations per request).
        (!self.table.contains(&old_key)).then_some((old_key, old))
    }

    pub fn remove(&mut self, key: &Key) -> Option<Entry> {
        let (e, n) = self.table.pop(key)?;
        self.deadlines.remove(&(e.deadline, n));
        Some(e)
    }

    /// Removes and returns the entry inserted first (to make room).
    pub fn pop_oldest(&mut self) -> Option<(Key, Entry)> {
        let (k, (e, n)) = self.table.pop_lru()?;
        self.deadlines.remove(&(e.deadline, n));
        Some((k, e))
    }

    /// Removes and returns the entry whose deadline is earliest, if it
    /// has passed.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(Key, Entry)> {
        let (&(deadline, _), key) = self.deadlines.first_key_value()?;
        if deadline > now {
            return None;
        }
        let key = key.clone();
        let e = self.remove(&key)?;
        Some((key, e))
    }

    /// Brings every deadline later than `latest` forward to it (a reload
    /// shortened the timeout): none waits longer than the new setting.
    pub fn clamp_deadlines(&mut self, latest: Instant) {
        self.deadlines.clear();
        for (k, (e, n)) in self.table.iter_mut() {
            e.deadline = e.deadline.min(latest);
            self.deadlines.insert((e.deadline, *n), k.clone());
        }
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|(&(d, _), _)| d)
    }

    /// Removes and returns every entry matching `pred` (a member went
    /// away), oldest first.
    pub fn drain_where(&mut self, mut pred: impl FnMut(&Waiting) -> bool) -> Vec<(Key, Entry)> {
        let mut keys: Vec<(u64, Key)> = self
            .table
            .iter()
            .filter(|(_, (e, _))| pred(&e.waiting))
            .map(|(k, (_, n))| (*n, k.clone()))
            .collect();
        keys.sort_unstable_by_key(|(n, _)| *n);
        keys.into_iter()
            .filter_map(|(_, k)| self.remove(&k).map(|e| (k, e)))
            .collect()
    }

    /// Removes and returns everything (shutdown).
    pub fn drain_all(&mut self) -> Vec<(Key, Entry)> {
        let mut out = Vec::with_capacity(self.table.len());
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
}
