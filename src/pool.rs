//! The pool: who can serve requests, and how one is picked.
//!
//! Members are client resources (full JIDs of the target account, learnt
//! from presence) and component instances (connections to our listener).
//! The member list is a set kept in arrival order: no duplicates and no
//! holes, unlike mod_client_proxy's list, whose holes after an
//! unavailable presence made it drop requests.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::Balancing;
use crate::time::later;

/// A connection to our listener, numbered by the listener.
pub type InstanceId = u64;

/// One stay of a member in the pool, numbered by the pool. A resource
/// that goes unavailable and comes back, or an instance that reconnects,
/// is a new session: it may take requests the old one had, and starts
/// with no refusals held against it.
pub type Session = u64;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// A resource of the target account, by full JID.
    Resource(String),
    /// A component instance connected to our listener.
    Instance(InstanceId),
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::Resource(jid) => write!(f, "resource {jid}"),
            Member::Instance(id) => write!(f, "instance #{id}"),
        }
    }
}

#[derive(Debug)]
pub struct Pool {
    balancing: Balancing,
    members: Vec<Member>,
    load: HashMap<Member, usize>,
    next: usize,
    /// Each member's session, from its `add`.
    sessions: HashMap<Member, Session>,
    last_session: Session,
    /// Refusals (`routing.retry_on`) in a row, per member.
    refusals: HashMap<Member, u32>,
    /// Members out of the rotation, until when.
    quarantined: HashMap<Member, Instant>,
}

/// Which members may take a request: what [`Pool::pick_eligible`] skips.
pub struct Eligible<'a> {
    /// Instances only (the nodes of the domain belong to them).
    pub instances_only: bool,
    /// Sessions that already had the request.
    pub tried: &'a [Session],
    pub now: Instant,
}

impl Pool {
    pub fn new(balancing: Balancing) -> Self {
        Pool {
            balancing,
            members: Vec::new(),
            load: HashMap::new(),
            next: 0,
            sessions: HashMap::new(),
            last_session: 0,
            refusals: HashMap::new(),
            quarantined: HashMap::new(),
        }
    }

    pub fn set_balancing(&mut self, balancing: Balancing) {
        self.balancing = balancing;
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn contains(&self, m: &Member) -> bool {
        self.members.contains(m)
    }

    pub fn has_instances(&self) -> bool {
        self.members
            .iter()
            .any(|m| matches!(m, Member::Instance(_)))
    }

    /// Adds a member as a new session; false if it was already there.
    pub fn add(&mut self, m: Member) -> bool {
        if self.members.contains(&m) {
            return false;
        }
        self.last_session += 1;
        self.sessions.insert(m.clone(), self.last_session);
        self.members.push(m);
        true
    }

    /// Removes a member; false if it was not there. Its session ends, and
    /// its refusals and quarantine with it.
    pub fn remove(&mut self, m: &Member) -> bool {
        let before = self.members.len();
        self.members.retain(|x| x != m);
        self.forget(m);
        before != self.members.len()
    }

    fn forget(&mut self, m: &Member) {
        self.load.remove(m);
        self.sessions.remove(m);
        self.refusals.remove(m);
        self.quarantined.remove(m);
    }

    /// The session of a member in the pool.
    pub fn session(&self, m: &Member) -> Option<Session> {
        self.sessions.get(m).copied()
    }

    /// A member refused a request (`routing.retry_on`). After `after`
    /// refusals in a row (never when zero) it leaves the rotation until
    /// `now + for_`; true when that starts now.
    pub fn refused(&mut self, m: &Member, now: Instant, after: u32, for_: Duration) -> bool {
        if !self.members.contains(m) {
            return false;
        }
        let n = self.refusals.entry(m.clone()).or_insert(0);
        *n += 1;
        if after == 0 || *n < after || self.quarantined.contains_key(m) {
            return false;
        }
        *n = 0;
        self.quarantined.insert(m.clone(), later(now, for_));
        true
    }

    /// A member answered a request other than with a refusal: its
    /// refusals are no longer in a row.
    pub fn served(&mut self, m: &Member) {
        self.refusals.remove(m);
    }

    /// Whether a member is out of the rotation at `now`.
    pub fn is_quarantined(&self, m: &Member, now: Instant) -> bool {
        self.quarantined.get(m).is_some_and(|until| *until > now)
    }

    /// Members out of the rotation now (until their quarantine is
    /// lifted, see [`Pool::lift_quarantines`]).
    pub fn quarantined(&self) -> impl Iterator<Item = &Member> {
        self.quarantined.keys()
    }

    /// Ends the quarantines that are over at `now`; the members back in
    /// the rotation, in pool order.
    pub fn lift_quarantines(&mut self, now: Instant) -> Vec<Member> {
        if self.quarantined.is_empty() {
            return Vec::new();
        }
        let over: Vec<Member> = self
            .members
            .iter()
            .filter(|m| self.quarantined.get(*m).is_some_and(|u| *u <= now))
            .cloned()
            .collect();
        for m in &over {
            self.quarantined.remove(m);
        }
        over
    }

    /// When the next quarantine ends.
    pub fn next_quarantine_end(&self) -> Option<Instant> {
        self.quarantined.values().min().copied()
    }

    /// Whether `m` may take a request: in the pool, of the right kind,
    /// not quarantined, and not a session that had it.
    pub fn is_eligible(&self, m: &Member, e: &Eligible) -> bool {
        (!e.instances_only || matches!(m, Member::Instance(_)))
            && !self.is_quarantined(m, e.now)
            && self.session(m).is_some_and(|s| !e.tried.contains(&s))
    }

    /// Removes every client resource (presence error, upstream loss).
    pub fn clear_resources(&mut self) -> Vec<Member> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|m| matches!(m, Member::Resource(_)));
        self.members = kept;
        for m in &gone {
            self.forget(m);
        }
        gone
    }

    /// Requests now pending on `m`.
    pub fn load(&self, m: &Member) -> usize {
        self.load.get(m).copied().unwrap_or(0)
    }

    pub fn inc_load(&mut self, m: &Member) {
        if self.members.contains(m) {
            *self.load.entry(m.clone()).or_insert(0) += 1;
        }
    }

    pub fn dec_load(&mut self, m: &Member) {
        if let Some(n) = self.load.get_mut(m) {
            *n = n.saturating_sub(1);
        }
    }

    /// Picks a member for a request from `requester_bare`.
    pub fn pick<R: Rng + ?Sized>(&mut self, requester_bare: &str, rng: &mut R) -> Option<Member> {
        self.pick_where(requester_bare, rng, |_, _| true)
    }

    /// Picks an instance (for addresses only a component can serve, such
    /// as a MUC room `room@domain`).
    pub fn pick_instance<R: Rng + ?Sized>(
        &mut self,
        requester_bare: &str,
        rng: &mut R,
    ) -> Option<Member> {
        self.pick_where(requester_bare, rng, |_, m| matches!(m, Member::Instance(_)))
    }

    /// Picks a target resource in the rotation (not quarantined) for a
    /// conversation with `sender_bare` (issue 14): instances are not
    /// asked, they keep [`Pool::sticky_instance`].
    pub fn pick_resource<R: Rng + ?Sized>(
        &mut self,
        sender_bare: &str,
        rng: &mut R,
        now: Instant,
    ) -> Option<Member> {
        let ok: Vec<bool> = self
            .members
            .iter()
            .map(|m| matches!(m, Member::Resource(_)) && !self.is_quarantined(m, now))
            .collect();
        self.pick_where(sender_bare, rng, |i, _| ok.get(i).copied().unwrap_or(false))
    }

    /// Picks an eligible member (see [`Eligible`]). With nothing to skip
    /// it picks as [`Pool::pick`] and [`Pool::pick_instance`] do, drawing
    /// the same numbers from `rng`.
    pub fn pick_eligible<R: Rng + ?Sized>(
        &mut self,
        requester_bare: &str,
        rng: &mut R,
        e: &Eligible,
    ) -> Option<Member> {
        let ok: Vec<bool> = self
            .members
            .iter()
            .map(|m| self.is_eligible(m, e))
            .collect();
        self.pick_where(requester_bare, rng, |i, _| {
            ok.get(i).copied().unwrap_or(false)
        })
    }

    fn pick_where<R: Rng + ?Sized>(
        &mut self,
        requester_bare: &str,
        rng: &mut R,
        eligible: impl Fn(usize, &Member) -> bool,
    ) -> Option<Member> {
        let candidates: Vec<usize> = (0..self.members.len())
            .filter(|&i| eligible(i, &self.members[i]))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = match self.balancing {
            Balancing::Random => candidates[rng.random_range(0..candidates.len())],
            Balancing::RoundRobin => {
                self.next = self.next.wrapping_add(1);
                candidates[self.next % candidates.len()]
            }
            Balancing::LeastPending => {
                let load = |i: &usize| self.load(&self.members[*i]);
                let min = candidates.iter().map(load).min().unwrap_or(0);
                let least: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|i| load(i) == min)
                    .collect();
                least[rng.random_range(0..least.len())]
            }
            Balancing::Sticky => {
                let members = candidates.iter().map(|&i| &self.members[i]);
                candidates[rendezvous(requester_bare, members)?.0]
            }
        };
        self.members.get(i).cloned()
    }

    /// The instance that messages and presence from `sender_bare` stick
    /// to: one conversation stays on one instance and moves only when that
    /// instance leaves.
    pub fn sticky_instance(&self, sender_bare: &str) -> Option<InstanceId> {
        let instances = self
            .members
            .iter()
            .filter(|m| matches!(m, Member::Instance(_)));
        match rendezvous(sender_bare, instances)?.1 {
            Member::Instance(id) => Some(*id),
            Member::Resource(_) => None,
        }
    }
}

/// Highest-random-weight choice: each (key, member) pair gets a score and
/// the best wins, so removing one member only moves the keys it held.
/// The hash is FNV-1a, fixed and documented, so every jatproxy process
/// makes the same choice.
fn rendezvous<'a>(
    key: &str,
    members: impl Iterator<Item = &'a Member>,
) -> Option<(usize, &'a Member)> {
    members.enumerate().max_by_key(|(_, m)| score(key, m))
}

fn score(key: &str, m: &Member) -> u64 {
    let mut h = Fnv::new();
    h.write(key.as_bytes());
    h.write(&[0xff]);
    match m {
        Member::Resource(jid) => {
            h.write(b"r");
            h.write(jid.as_bytes());
        }
        Member::Instance(id) => {
            h.write(b"i");
            h.write(&id.to_be_bytes());
        }
    }
    // FNV's low bits mix poorly; a final avalanche spreads them.
    let mut x = h.0;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn res(r: &str) -> Member {
        Member::Resource(format!("impl@example.test/{r}"))
    }

    #[test]
    fn set_semantics() {
        let mut p = Pool::new(Balancing::Random);
        assert!(p.add(res("a")));
        assert!(!p.add(res("a")));
        assert!(p.add(res("b")));
        assert!(p.remove(&res("a")));
        assert!(!p.remove(&res("a")));
        assert_eq!(p.members(), &[res("b")]);
    }

    #[test]
    fn random_never_picks_a_hole() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = Pool::new(Balancing::Random);
        p.add(res("a"));
        p.add(res("b"));
        p.remove(&res("a"));
        for _ in 0..100 {
            assert_eq!(p.pick("u@x", &mut rng), Some(res("b")));
        }
    }

    #[test]
    fn random_spreads() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = Pool::new(Balancing::Random);
        p.add(res("a"));
        p.add(res("b"));
        let a = (0..1000)
            .filter(|_| p.pick("u@x", &mut rng) == Some(res("a")))
            .count();
        assert!((350..650).contains(&a), "{a}");
    }

    #[test]
    fn round_robin_alternates() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = Pool::new(Balancing::RoundRobin);
        p.add(res("a"));
        p.add(res("b"));
        let picks: Vec<_> = (0..4).map(|_| p.pick("u@x", &mut rng)).collect();
        assert_ne!(picks[0], picks[1]);
        assert_eq!(picks[0], picks[2]);
        assert_eq!(picks[1], picks[3]);
    }

    #[test]
    fn least_pending_prefers_idle() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = Pool::new(Balancing::LeastPending);
        p.add(res("a"));
        p.add(res("b"));
        p.inc_load(&res("a"));
        for _ in 0..20 {
            assert_eq!(p.pick("u@x", &mut rng), Some(res("b")));
        }
        p.inc_load(&res("b"));
        p.inc_load(&res("b"));
        p.dec_load(&res("a"));
        assert_eq!(p.pick("u@x", &mut rng), Some(res("a")));
    }

    #[test]
    fn sticky_is_stable_when_others_come_and_go() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = Pool::new(Balancing::Sticky);
        for r in ["a", "b", "c"] {
            p.add(res(r));
        }
        let users: Vec<String> = (0..200).map(|i| format!("user{i}@example.test")).collect();
        let before: Vec<_> = users.iter().map(|u| p.pick(u, &mut rng)).collect();
        // Every member gets some users.
        for r in ["a", "b", "c"] {
            assert!(before.iter().filter(|m| **m == Some(res(r))).count() > 30);
        }
        // Removing b moves only b's users; adding d takes only from others
        // what it wins.
        p.remove(&res("b"));
        p.add(res("d"));
        for (u, was) in users.iter().zip(&before) {
            let now = p.pick(u, &mut rng);
            if *was != Some(res("b")) && now != Some(res("d")) {
                assert_eq!(&now, was, "{u} moved without cause");
            }
        }
    }

    #[test]
    fn sticky_instance_ignores_resources() {
        let mut p = Pool::new(Balancing::Random);
        p.add(res("a"));
        assert_eq!(p.sticky_instance("u@x"), None);
        p.add(Member::Instance(3));
        p.add(Member::Instance(4));
        let first = p.sticky_instance("u@x");
        assert!(first.is_some());
        assert_eq!(p.sticky_instance("u@x"), first);
    }

    #[test]
    fn pick_instance_skips_resources() {
        let mut rng = StdRng::seed_from_u64(7);
        for b in [
            Balancing::Random,
            Balancing::RoundRobin,
            Balancing::LeastPending,
            Balancing::Sticky,
        ] {
            let mut p = Pool::new(b);
            p.add(res("a"));
            assert_eq!(p.pick_instance("u@x", &mut rng), None);
            p.add(Member::Instance(9));
            p.add(res("b"));
            for _ in 0..10 {
                assert_eq!(
                    p.pick_instance("u@x", &mut rng),
                    Some(Member::Instance(9)),
                    "{b:?}"
                );
            }
        }
    }

    #[test]
    fn clear_resources_keeps_instances() {
        let mut p = Pool::new(Balancing::Random);
        p.add(res("a"));
        p.add(Member::Instance(1));
        p.add(res("b"));
        assert_eq!(p.clear_resources().len(), 2);
        assert_eq!(p.members(), &[Member::Instance(1)]);
    }
}
