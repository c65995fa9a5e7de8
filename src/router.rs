//! The routing policy: one stanza in, actions out.
//!
//! Pure: no sockets, no clock, no randomness of its own (`now` and the RNG
//! are passed in), so every row of the routing table in DESIGN.md is a
//! unit test. The connection tasks feed it frames and carry out the
//! actions it returns. Those are final: output for the server while it
//! is away is held here (a [`Backlog`]), and a request answered before
//! it was carried out is taken back here, so the executor only writes;
//! what writing finds out (a writer that ended) comes back as an input.
//!
//! The one rule above all: every iq request the router accepts gets
//! exactly one answer — the member's reply, or an error it makes itself
//! (no member, timeout, member lost, table full). Replies that match
//! nothing in flight (late, duplicated, spoofed) are dropped and counted.
//!
//! Before it errs, the router tries to get the right answer (issue 13,
//! `routing.*`): a request with no eligible member waits in the hold
//! ([`crate::hold`]); one in flight to a member that leaves goes to
//! another (`redispatch`); one a member refuses (`retry_on`) goes to
//! another, and a member that keeps refusing leaves the rotation for a
//! while. A member is a session, and no session gets a request twice.
//! Every pool join goes through [`Router::member_joined`].

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use rand::RngCore;
use tokio::time::Instant;

use crate::backlog::{Backlog, Bound, Class};
use crate::config::{Balancing, Config, Continuity, JatMode, Redispatch};
use crate::conversation::Conversations;
use crate::hold::{own, Ask, Held, Hold, Trip};
use crate::jat::{self, Entry, Found, Jat, Key, KeyRef, Pending, Waiting};
use crate::jid;
use crate::pool::{Eligible, InstanceId, Member, Pool};
use crate::qualify::Admission;
use crate::refusal;
use crate::rewrite::{rewrite, rewrite_from_full, Wire};
use crate::stanza::{self, StanzaError};
use crate::time::later;
use crate::xml::frame::{Kind, Limit, Stanza};
use crate::xml::StreamCondition;

#[path = "router_admission.rs"]
mod admission;
use admission::Admissions;
pub use admission::{AdmissionStats, Outside, QUESTION_ID_PREFIX};

#[path = "router_chat.rs"]
mod chat;
pub use chat::{Chat, ChatStats};

/// What the router needs to know; a subset of [`Config`] that can change
/// on reload without touching connections.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The component domain (lower-case, no trailing dot).
    pub domain: String,
    /// The target account's bare JID, if client resources serve requests.
    pub target: Option<String>,
    pub jat: JatMode,
    /// Route iq requests from target resources to `domain/ENC`.
    pub client_requests: bool,
    /// Ask the target for a presence subscription (`subscribe`) when
    /// upstream comes up; when false, the subscription is provisioned out
    /// of band and only a `probe` is sent. The target's own `subscribe`
    /// is answered `subscribed` either way.
    pub subscribe: bool,
    /// An instance listener is configured (`instances.listen`). Then the
    /// nodes of the domain (`room@D`, `user@D/res`) belong to the
    /// instances, as a component's nodes do; without one the client pool
    /// serves every address at the domain, as mod_client_proxy does. A
    /// setting, not whether an instance is connected right now, so what
    /// serves `room@D` does not change while instances come and go
    /// (changing `instances.listen` needs a restart).
    pub instances: bool,
    pub balancing: Balancing,
    pub iq_timeout: Duration,
    pub pending_capacity: NonZeroUsize,
    /// The largest stanza jatproxy writes to the server
    /// (`limits.upstream_max_write_bytes`). The server closes the whole
    /// component stream on a stanza over its own limit (Prosody:
    /// `component_stanza_size_limit`, 512 KiB), and its re-serialisation
    /// can make a user's stanza six times larger than the user sent it:
    /// forwarded back as it came, one user's request would cut the link.
    pub max_write: usize,
    /// Which client resources join the pool (`client_proxy.resources`,
    /// `require_feature`, `qualify_timeout`); instances are not qualified.
    pub admission: Admission,
    /// Hold, re-dispatch, retry and quarantine (`routing.*`, issue 13).
    pub continuity: Continuity,
    /// Messages and presence through JAT (`client_proxy.messages`,
    /// `presence`, `token_idle_timeout`; issue 14).
    pub chat: Chat,
}

impl RouterConfig {
    pub fn from_config(c: &Config) -> Self {
        RouterConfig {
            domain: c.upstream.domain.clone(),
            target: c
                .client_proxy
                .target_address
                .as_ref()
                .map(|j| j.to_string()),
            jat: c.client_proxy.jat,
            client_requests: c.client_proxy.client_requests,
            subscribe: c.client_proxy.subscribe,
            instances: c.instances.listen.is_some(),
            max_write: c.limits.upstream_max_write_bytes,
            balancing: c.routing.balancing,
            iq_timeout: c.routing.iq_timeout,
            pending_capacity: NonZeroUsize::new(c.routing.pending_capacity)
                .unwrap_or(NonZeroUsize::MIN),
            admission: c.client_proxy.admission.clone(),
            continuity: c.routing.continuity.clone(),
            chat: Chat {
                messages: c.client_proxy.messages,
                presence: c.client_proxy.presence,
                token_idle_timeout: c.client_proxy.token_idle_timeout,
            },
        }
    }
}

/// Something for the connection tasks to do; final when emitted (see the
/// module doc). What carrying it out finds comes back through
/// [`Router::instance_down`] and [`Router::upstream_unsent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write to the XMPP server.
    Upstream(Wire),
    /// Write to the XMPP server the answer to an iq request (a member's
    /// reply, or an error jatproxy made). While the server is away it is
    /// held whatever `limits.upstream_buffer` says: dropping it would leave
    /// a request without its one answer, and the pending table bounds how
    /// many there can be.
    UpstreamAnswer(Wire),
    /// Write an instance's iq request to the XMPP server. The key is the
    /// router's, for when it comes back unsent.
    UpstreamRequest(Wire, Key),
    /// Write to one instance.
    Instance(InstanceId, Wire),
    /// Close an instance's stream, for this reason.
    CloseInstance(InstanceId, CloseReason),
}

/// Why the router closes an instance's stream: the stream error it is
/// closed with, and the rule named in the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It sent a `from` that is not an address in the domain.
    InvalidFrom,
}

impl CloseReason {
    /// The stream error condition (RFC 6120 §4.9.3).
    pub fn condition(self) -> StreamCondition {
        match self {
            CloseReason::InvalidFrom => StreamCondition::InvalidFrom,
        }
    }

    /// What the instance did, for the log line ("closing instance stream:
    /// it ...").
    pub fn why(self) -> &'static str {
        match self {
            CloseReason::InvalidFrom => "sent a 'from' that is not an address in the domain",
        }
    }
}

/// Counters, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests forwarded to a pool member.
    pub requests_routed: u64,
    /// Requests started by target resources or instances, sent upstream.
    pub requests_outbound: u64,
    /// Member replies delivered to whoever waited for them.
    pub replies_delivered: u64,
    /// Error replies the router generated, by [`StanzaError`] (index in
    /// [`StanzaError::ALL`]).
    pub errors_generated: [u64; StanzaError::ALL.len()],
    /// Replies matching nothing in flight (late after a timeout, duplicates).
    pub replies_unmatched: u64,
    /// Replies from someone other than the member asked (spoofed).
    pub replies_spoofed: u64,
    /// Stanzas without usable addresses, or for an address not ours.
    pub dropped_unaddressed: u64,
    /// Stanzas the proxy has no use for (unknown elements, stray errors,
    /// presence the target directs at `D/x` or `node@D`).
    pub dropped_other: u64,
    /// Stanzas from upstream skipped for breaking a per-stanza limit, by
    /// [`Limit`] (index in [`Limit::ALL`]).
    pub skipped: [u64; Limit::ALL.len()],
    /// Per pool member, for members in the pool now: a member's entry
    /// goes when it leaves, so churning resources cannot grow this (or
    /// the metrics built from it) without bound.
    pub members: BTreeMap<Member, MemberStats>,
    /// What members beyond [`MAX_MEMBER_SERIES`] did, summed.
    pub members_other: MemberStats,
    /// Requests that found no eligible member and waited for one
    /// (`routing.hold_when_empty`), new, re-dispatched or retried.
    pub requests_held: u64,
    /// Held requests sent to a member that joined or came back.
    pub requests_released: u64,
    /// Held requests answered because their hold ended.
    pub hold_expired: u64,
    /// Requests in flight to a member that left, sent on to another (or
    /// held for one): `routing.redispatch`.
    pub requests_redispatched: u64,
    /// Requests a member refused (`routing.retry_on`), sent on to another
    /// (or held for one).
    pub requests_retried: u64,
    /// Replies and bounces from a member that was lost while its request
    /// went on elsewhere: dropped, never delivered.
    pub replies_late: u64,
    /// Times a member was taken out of the rotation for refusing.
    pub quarantines: u64,
    /// Members in the pool but out of the rotation now (a gauge): what
    /// `jatproxy_pool_members` leaves out (see [`crate::status::Status::eligible`]).
    pub quarantined: BTreeSet<Member>,
    /// Resources refused and being qualified.
    pub admission: AdmissionStats,
    /// Messages and presence between users and resources (issue 14).
    pub chat: ChatStats,
    /// Answers made while the server was away, written once it was back.
    /// A requester whose own session ended meanwhile (a server restart
    /// ends them all) never gets one: the server drops an iq answer to a
    /// gone session without a word (Prosody's `mod_iq` bounces only a get
    /// or set to a full JID with no session), so jatproxy counts what it
    /// sent, not what arrived.
    pub answers_after_reconnect: u64,
}

/// Per-member entries kept at most; a pool larger than this is summed
/// into [`Stats::members_other`] past it.
pub const MAX_MEMBER_SERIES: usize = 256;

/// One member's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Requests sent to it.
    pub routed: u64,
    /// Its replies delivered to the requester.
    pub answered: u64,
    /// Of its replies, the errors (refusals under `routing.retry_on`
    /// included, though they are not delivered): what `/status` shows an
    /// operator looking for the member that fails.
    pub errors: u64,
}

impl Stats {
    pub fn generated(&self, e: StanzaError) -> u64 {
        StanzaError::ALL
            .iter()
            .position(|x| *x == e)
            .map_or(0, |i| self.errors_generated[i])
    }

    fn member(&mut self, m: &Member) -> &mut MemberStats {
        // Looked up before it is inserted: this runs twice per routed
        // request, and the entry API would copy the member's name each time.
        if !self.members.contains_key(m) {
            if self.members.len() >= MAX_MEMBER_SERIES {
                return &mut self.members_other;
            }
            self.members.insert(m.clone(), MemberStats::default());
        }
        match self.members.get_mut(m) {
            Some(s) => s,
            None => &mut self.members_other,
        }
    }

    fn count(&mut self, e: StanzaError) {
        if let Some(i) = StanzaError::ALL.iter().position(|x| *x == e) {
            self.errors_generated[i] += 1;
        }
    }
}

/// Where a stanza from upstream was addressed, relative to our domain.
enum To<'a> {
    /// The bare domain `D`: the only address whose presence is the
    /// target's presence to the proxy (pool presence).
    Bare,
    /// A bare node of the domain, `node@D`, served by the client pool
    /// (no instance listener configured).
    Node,
    /// `D/res` or, served by the client pool, `node@D/res`.
    Resource(&'a str),
}

/// A stanza from the server to an address the router serves, with what
/// every rule for it reads: who sent it, where to, and whether the sender
/// is the target account.
struct Addressed<'a> {
    st: &'a Stanza,
    from: &'a str,
    /// `to` as the server wrote it.
    to_attr: &'a str,
    to: To<'a>,
    /// The sender is the target account (any of its resources).
    from_target: bool,
}

/// An iq get/set from the server that is to be routed: its sender gets
/// the one answer, from the address the request was sent to.
struct Request<'a> {
    st: &'a Stanza,
    /// The requester, as the server stamped it.
    from: &'a str,
    /// The address it was sent to: the `from` of its answer.
    to: &'a str,
    id: &'a str,
}

/// Where a request to send comes from: the stanza just read, or the copy
/// a request keeps while it may be sent again.
enum Req<'a> {
    Fresh(&'a Stanza),
    Kept(Box<Stanza>),
}

impl Req<'_> {
    fn stanza(&self) -> &Stanza {
        match self {
            Req::Fresh(st) => st,
            Req::Kept(st) => st,
        }
    }

    /// A copy to keep: the one already kept, or a copy of the stanza read.
    fn into_kept(self) -> Box<Stanza> {
        match self {
            Req::Fresh(st) => own(st),
            Req::Kept(st) => st,
        }
    }
}

/// What became of a request the router routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A member has it.
    Sent,
    /// It waits for an eligible member.
    Held,
    /// It got its answer (an error) now.
    Answered,
}

/// What became of the requests in flight to members that were lost:
/// the counts the one log line per loss reports, never a line per
/// request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lost {
    /// Sent on to another member (`routing.redispatch`).
    pub redispatched: usize,
    /// Waiting in the hold for an eligible member.
    pub held: usize,
    /// Answered with an error now (`recipient-unavailable`, or the last
    /// refusal of a request being retried).
    pub answered: usize,
}

impl Lost {
    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Sent => self.redispatched += 1,
            Outcome::Held => self.held += 1,
            Outcome::Answered => self.answered += 1,
        }
    }

    /// Whether any request was in flight to the lost members.
    pub fn any(&self) -> bool {
        self.redispatched + self.held + self.answered > 0
    }
}

impl std::ops::AddAssign for Lost {
    fn add_assign(&mut self, o: Lost) {
        self.redispatched += o.redispatched;
        self.held += o.held;
        self.answered += o.answered;
    }
}

/// Which members may serve an inbound request.
#[derive(Clone, Copy)]
enum Serving {
    /// Any member of the pool (a request to `D` or `D/res`).
    Pool,
    /// Instances only: the nodes of the domain (`room@D`) belong to them
    /// when an instance listener is configured.
    Instances,
}

#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    pool: Pool,
    pending: Pending,
    jat: Jat,
    stats: Stats,
    /// Whether output for the server is written (a session is up) or
    /// held in `backlog`.
    online: bool,
    /// Output kept for the server while it is away.
    backlog: Backlog,
    /// Requests answered (or moved to another member) before they were
    /// sent, and so never sent.
    withdrawn: u64,
    /// Requests waiting for an eligible member.
    hold: Hold,
    /// Which target resources qualify for the pool.
    admission: Admissions,
    /// Sticky resources and presence subscribers (issue 14).
    conversations: Conversations,
}

impl Router {
    /// A router for a server not yet connected: output for it is held,
    /// up to `upstream_buffer` (items and bytes) besides answers (see
    /// [`Backlog`]), until [`Router::upstream_online`].
    pub fn new(cfg: RouterConfig, upstream_buffer: Bound) -> Self {
        Router {
            pool: Pool::new(cfg.balancing),
            pending: Pending::new(cfg.pending_capacity),
            jat: Jat::new(cfg.jat, cfg.pending_capacity, cfg.chat.token_idle_timeout),
            conversations: Conversations::new(cfg.pending_capacity),
            stats: Stats::default(),
            online: false,
            backlog: Backlog::new(upstream_buffer),
            withdrawn: 0,
            hold: Hold::default(),
            admission: Admissions::new(cfg.admission.clone()),
            cfg,
        }
    }

    /// What is held for the server now.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// A reload's `limits.upstream_buffer` and `upstream_buffer_bytes`:
    /// applies to what is held next.
    pub fn set_upstream_buffer(&mut self, bound: Bound) {
        self.backlog.set_bound(bound);
    }

    /// Requests answered (timed out, given up for room, their instance
    /// gone) or moved to another member before they could be sent, and
    /// so never sent.
    pub fn requests_withdrawn(&self) -> u64 {
        self.withdrawn
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Requests waiting for an eligible member now.
    pub fn held_len(&self) -> usize {
        self.hold.len()
    }

    /// The next time [`Router::expire`] has work to do: a request's
    /// deadline, a hold's end, a quarantine's end.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.pending.next_deadline(),
            self.hold.next_deadline(),
            self.conversations.next_held_deadline(),
            self.pool.next_quarantine_end(),
            self.admission.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies new settings that do not need a new connection: balancing
    /// and timeout (for new requests). Domain, target and JAT mode changes
    /// need a restart and are ignored here.
    pub fn reconfigure(&mut self, balancing: Balancing, iq_timeout: Duration) {
        self.cfg.balancing = balancing;
        self.cfg.iq_timeout = iq_timeout;
        self.pool.set_balancing(balancing);
    }

    /// A configuration reload: everything in `new` except the domain, the
    /// JAT mode and the pending capacity (which the caller refuses to
    /// change, see `reload::plan`). A longer timeout applies to new
    /// requests; a shorter one also to requests in flight, counted from
    /// `now` (none waits longer than the new setting). A new target
    /// address takes the old one's resources out of the pool (their
    /// pending requests are answered `recipient-unavailable`) and, when a
    /// session is up, asks the new one for its presence as a fresh
    /// upstream session would. Messages and presence (`client_proxy.messages`,
    /// `presence`) apply to the next stanza; presence turned off forgets
    /// its subscribers; a new `token_idle_timeout` applies to the next
    /// token used.
    pub fn reload(
        &mut self,
        new: RouterConfig,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        if new.iq_timeout < self.cfg.iq_timeout {
            self.pending.clamp_deadlines(later(now, new.iq_timeout));
        }
        self.reconfigure(new.balancing, new.iq_timeout);
        self.cfg.client_requests = new.client_requests;
        self.cfg.subscribe = new.subscribe;
        self.cfg.max_write = new.max_write;
        self.cfg.continuity = new.continuity;
        self.set_admission(new.admission);
        self.jat.set_idle(new.chat.token_idle_timeout);
        if !new.chat.presence {
            self.conversations.forget_subscribers();
        }
        self.cfg.chat = new.chat;
        if self.cfg.target != new.target {
            self.lose_resources(
                "client_proxy.target_address changed: the old target's resources left the pool",
                None,
                now,
                rng,
                out,
            );
            self.cfg.target = new.target;
            if self.online {
                self.upstream_online(out);
            }
        }
    }

    // ----- lifecycle -------------------------------------------------------

    /// The upstream session is up: ask the target for its presence.
    ///
    /// With `subscribe` on, only `subscribe` is sent here. When the
    /// subscription exists the server answers `subscribed` and the current
    /// presence of every resource; when it does not, the request is stored
    /// for the target. A `probe` now would be harmful: Prosody answers a
    /// probe from an unsubscribed contact with `unsubscribed` and deletes
    /// the stored request. The probe is sent once `subscribed` arrives.
    ///
    /// With `subscribe` off the operator provisioned the subscription
    /// (`prosodyctl mod_roster_command`, `ejabberdctl add_rosteritem`), so
    /// there is no request to lose: the `probe` goes out at once, or the
    /// resources already online would stay unknown until their presence
    /// next changes.
    ///
    /// What was held while the server was away goes after that, in
    /// order, except an instance's request answered meanwhile.
    pub fn upstream_online(&mut self, out: &mut Vec<Action>) {
        self.online = true;
        if let Some(target) = &self.cfg.target {
            let ptype = if self.cfg.subscribe {
                "subscribe"
            } else {
                "probe"
            };
            self.for_server(
                up(stanza::presence(&self.cfg.domain, target, Some(ptype))),
                out,
            );
        }
        let mut answers = 0u64;
        for (wire, class) in self.backlog.drain() {
            out.push(match class {
                Class::Request(key) if !self.pending.contains(&key) => {
                    // Answered (timed out, given up for room, its instance
                    // gone): the instance was told it failed.
                    self.withdrawn += 1;
                    continue;
                }
                Class::Request(key) => Action::UpstreamRequest(wire, key),
                Class::Answer => {
                    answers += 1;
                    Action::UpstreamAnswer(wire)
                }
                Class::Other => Action::Upstream(wire),
            });
        }
        if answers > 0 {
            self.stats.answers_after_reconnect += answers;
            tracing::info!(
                answers,
                "answers made while the server was away sent now; requesters whose \
                 sessions ended meanwhile will not get them (the server drops them unseen)"
            );
        }
    }

    /// The upstream session is gone. Presence will be learnt anew after
    /// reconnecting, so client resources leave the pool now: requests
    /// pending on them are lost with them and follow the re-dispatch
    /// rules (another member, the hold, or an error answer). Output for
    /// the server, and everything for it in `out` not yet written, is
    /// held until upstream is back; held requests keep waiting, their
    /// clocks running.
    pub fn upstream_lost(&mut self, now: Instant, rng: &mut dyn RngCore, out: &mut Vec<Action>) {
        self.hold_unwritten(out);
        self.lose_resources(
            "upstream lost: the target's resources left the pool until the server \
             sends their presence again",
            None,
            now,
            rng,
            out,
        );
    }

    /// Every client resource leaves the pool at once: their requests
    /// fail as in [`Router::fail_member`], and one line says why (`why`)
    /// and what became of them. When the target itself (`from`) said so
    /// (a presence error, a revoked subscription) it is a `WARN`, always:
    /// the pool stays empty until the target changes its mind. Otherwise
    /// (the link lost, a new target) an `INFO`, if any was in the pool.
    fn lose_resources(
        &mut self,
        why: &str,
        from_target: Option<&str>,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let gone = self.clear_resources();
        self.announce_pool(out);
        let lost = self.fail_members(&gone, now, rng, out);
        let (n, r, h, a) = (gone.len(), lost.redispatched, lost.held, lost.answered);
        match from_target {
            Some(from) => tracing::warn!(
                target_address = jid::bare(from),
                resources = n,
                redispatched = r,
                held = h,
                answered = a,
                "{why}"
            ),
            None if n > 0 => tracing::info!(
                resources = n,
                redispatched = r,
                held = h,
                answered = a,
                "{why}"
            ),
            None => {}
        }
    }

    /// The upstream writer ended before the session's end was reported:
    /// `unsent` could not be written. It is held, and so is everything
    /// for the server still in `out`, in order; the pool stays as it is
    /// until [`Router::upstream_lost`].
    pub fn upstream_unsent(&mut self, unsent: Action, out: &mut Vec<Action>) {
        self.online = false;
        self.hold(unsent, out);
        self.hold_unwritten(out);
    }

    /// Stops writing to the server: what `out` has for it is held
    /// instead, in order.
    fn hold_unwritten(&mut self, out: &mut Vec<Action>) {
        self.online = false;
        if !out.iter().any(is_for_upstream) {
            return;
        }
        let (upstream, rest): (Vec<_>, Vec<_>) =
            std::mem::take(out).into_iter().partition(is_for_upstream);
        *out = rest;
        for a in upstream {
            self.hold(a, out);
        }
    }

    /// An instance connected: a member (see [`Router::member_joined`]).
    pub fn instance_up(&mut self, id: InstanceId, now: Instant, out: &mut Vec<Action>) {
        self.member_joined(Member::Instance(id), now, out);
    }

    /// A member joins the pool as a new session. Every pool join goes
    /// through here: an instance on connect, a client resource on its
    /// available presence (once qualified, see `router_admission.rs`). Requests held for want of an eligible member are sent
    /// to it, in arrival order. False when it was in the pool already.
    pub fn member_joined(&mut self, m: Member, now: Instant, out: &mut Vec<Action>) -> bool {
        if !self.pool.add(m.clone()) {
            return false;
        }
        self.announce_pool(out);
        self.release_messages(&m, out);
        self.release_to(&m, now, out);
        true
    }

    /// Sends `m` every held request it may take, in arrival order.
    fn release_to(&mut self, m: &Member, now: Instant, out: &mut Vec<Action>) {
        if self.hold.is_empty() {
            return;
        }
        let pool = &self.pool;
        let ready = self.hold.take_where(|h| {
            let e = Eligible {
                instances_only: h.ask.trip.instances_only,
                tried: &h.ask.trip.tried,
                now,
            };
            pool.is_eligible(m, &e)
        });
        if ready.is_empty() {
            return;
        }
        let released = ready.len();
        for Held { mut ask, .. } in ready {
            self.stats.requests_released += 1;
            match ask.trip.request.take() {
                Some(st) => {
                    self.send_to(ask, Req::Kept(st), m.clone(), now, out);
                }
                None => self.answer_unserved(ask, out),
            }
        }
        tracing::info!(member = %m, released, "held requests sent to a member");
    }

    /// An instance disconnected or stopped reading: out of rotation at
    /// once; its pending requests follow the re-dispatch rules.
    pub fn instance_down(
        &mut self,
        id: InstanceId,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let m = Member::Instance(id);
        self.pool.remove(&m);
        self.announce_pool(out);
        let lost = self.fail_member(&m, now, rng, out);
        // The connection task logged why the instance went; this says
        // what became of its requests, once.
        if lost.any() {
            tracing::info!(
                member = %m,
                redispatched = lost.redispatched,
                held = lost.held,
                answered = lost.answered,
                "instance left the pool with requests in flight"
            );
        }
        // Requests the instance started can no longer be delivered, nor
        // need to be sent.
        let started = self.pending.drain_where(
            |w| matches!(w, Waiting::FromInstance { instance, .. } if *instance == id),
        );
        for (key, _) in started {
            self.withdraw(&key, out);
        }
    }

    /// Answers every request whose deadline has passed and every held
    /// request whose hold ended, and refuses every resource that did not
    /// answer its disco#info in time; members whose quarantine is over are
    /// back in the rotation, and take the held requests they may.
    pub fn expire(&mut self, now: Instant, rng: &mut dyn RngCore, out: &mut Vec<Action>) {
        self.expire_questions(now, rng, out);
        while let Some((key, entry)) = self.pending.pop_expired(now) {
            self.answer(key, entry.waiting, StanzaError::RemoteServerTimeout, out);
        }
        for h in self.hold.take_expired(now) {
            self.stats.hold_expired += 1;
            self.answer_unserved(h.ask, out);
        }
        self.expire_messages(now, out);
        for m in self.pool.lift_quarantines(now) {
            tracing::info!(member = %m, "quarantine over: back in the rotation");
            self.release_to(&m, now, out);
        }
        self.count_quarantined();
    }

    /// A request that could not be sent gets its one answer now (if it
    /// is still pending: a timeout may have answered it already).
    fn fail_request(&mut self, key: &Key, err: StanzaError, out: &mut Vec<Action>) {
        if let Some(entry) = self.pending.remove(key) {
            self.answer(key.clone(), entry.waiting, err, out);
        }
    }

    /// Shutdown: answers everything still pending or held.
    pub fn drain(&mut self, out: &mut Vec<Action>) {
        for (key, entry) in self.pending.drain_all() {
            self.answer(key, entry.waiting, StanzaError::RecipientUnavailable, out);
        }
        for h in self.hold.drain_all() {
            self.answer_ask(&h.ask, StanzaError::RecipientUnavailable, out);
        }
        self.drain_messages(out);
    }

    /// Shutdown: a stanza from the server that arrives after routing has
    /// stopped. A request still gets its one answer, `recipient-unavailable`
    /// (type `wait`: retrying may reach another process or the restarted
    /// one); anything else is dropped. Returns whether it was answered.
    pub fn refuse_closing(&mut self, st: &Stanza, out: &mut Vec<Action>) -> bool {
        let Some(from) = st.from() else {
            self.stats.dropped_unaddressed += 1;
            return false;
        };
        if st.kind == Kind::Iq && st.is_iq_request() {
            let from = from.to_owned();
            self.error_reply(st, &from, StanzaError::RecipientUnavailable, out);
            true
        } else {
            self.stats.dropped_other += 1;
            false
        }
    }

    // ----- from upstream ---------------------------------------------------

    /// A stanza from the XMPP server that broke a per-stanza limit and was
    /// skipped by the framer: it was never forwarded, so where an answer
    /// may be sent (an iq request, a message or presence that is not an
    /// error) its sender gets `policy-violation` (modify) from the address
    /// it wrote to, with `text` naming the limit. That is the request's one
    /// answer: it was never recorded as pending. An iq response is dropped
    /// (the request it answers gets its answer when it times out); a head
    /// that could not be recovered, or has no sender, is only counted.
    pub fn skipped_from_upstream(
        &mut self,
        limit: Limit,
        head: Option<&Stanza>,
        text: &str,
        out: &mut Vec<Action>,
    ) {
        self.stats.skipped[limit.index()] += 1;
        let Some(st) = head else {
            return;
        };
        let answerable = match st.kind {
            Kind::Iq => st.is_iq_request(),
            Kind::Message | Kind::Presence => !st.is_error(),
            Kind::Other => false,
        };
        let Some(from) = st.from().filter(|_| answerable) else {
            return;
        };
        self.error_reply_text(st, from, StanzaError::PolicyViolation, Some(text), out);
    }

    /// A stanza from the XMPP server.
    pub fn from_upstream(
        &mut self,
        st: &Stanza,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        if st.kind == Kind::Other {
            self.stats.dropped_other += 1;
            return;
        }
        let (Some(from), Some(to_attr)) = (st.from(), st.to()) else {
            self.stats.dropped_unaddressed += 1;
            return;
        };
        let (to_bare, to_res) = jid::split(to_attr);
        let node = !jid::bare_eq(to_bare, &self.cfg.domain);
        if node {
            if !jid::bare_eq(jid::domain(to_bare), &self.cfg.domain) {
                self.stats.dropped_unaddressed += 1;
                return;
            }
            if self.cfg.instances || self.cfg.target.is_none() {
                self.node_stanza_from_upstream(st, from, to_attr, now, rng, out);
                return;
            }
            // No instance listener: the client pool serves `node@D` and
            // `node@D/res` as it serves `D` and `D/res`, as the module
            // does (it hooks `iq/bare` and `iq/full` on its host too).
        }
        let to = match (to_res, node) {
            (Some(r), _) => To::Resource(r),
            (None, false) => To::Bare,
            (None, true) => To::Node,
        };
        let from_target = self
            .cfg
            .target
            .as_deref()
            .is_some_and(|t| jid::bare_eq(jid::bare(from), t));
        let a = Addressed {
            st,
            from,
            to_attr,
            to,
            from_target,
        };
        if self.conversation(&a, now, rng, out) {
            return;
        }
        match st.kind {
            Kind::Presence => self.presence_from_upstream(&a, now, rng, out),
            Kind::Message => self.message_from_upstream(&a, out),
            Kind::Iq => self.iq_from_upstream(&a, now, rng, out),
            Kind::Other => {}
        }
    }

    /// A stanza for `node@domain` (a MUC room, a gateway's user) when an
    /// instance listener is configured: the nodes belong to the
    /// instances, as they would to the component itself. Requests are
    /// balanced over the instances and tracked like any other; messages
    /// and presence stick to one instance per sender. With no instance
    /// connected, requests and messages get `service-unavailable` and
    /// presence is dropped, as for a component that is away.
    fn node_stanza_from_upstream(
        &mut self,
        st: &Stanza,
        from: &str,
        to_attr: &str,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        match st.kind {
            Kind::Iq if st.is_iq_request() => match st.id() {
                Some(id) => {
                    let req = Request {
                        st,
                        from,
                        to: to_attr,
                        id,
                    };
                    self.inbound_request(&req, Serving::Instances, now, rng, out)
                }
                None => self.error_reply(st, from, StanzaError::BadRequest, out),
            },
            Kind::Iq if st.is_iq_response() => self.stats.replies_unmatched += 1,
            Kind::Iq => self.error_reply(st, from, StanzaError::BadRequest, out),
            Kind::Message | Kind::Presence => {
                if let Some(id) = self.pool.sticky_instance(jid::bare(from)) {
                    out.push(Action::Instance(id, Wire::One(st.bytes.clone())));
                } else if st.kind == Kind::Message {
                    self.error_reply(st, from, StanzaError::ServiceUnavailable, out);
                } else {
                    self.stats.dropped_unaddressed += 1;
                }
            }
            Kind::Other => self.stats.dropped_other += 1,
        }
    }

    /// Presence from upstream. From the target, presence to the bare
    /// domain is what the pool is made of; presence it directs at
    /// `D/x` or `node@D` is presence towards that one address (RFC 6121
    /// §4.6) and changes nothing: an `unavailable` a resource sends to
    /// `D/x` ends only its directed presence there, while it stays online
    /// for `D`. Subscription presence is the proxy's only when it is for
    /// `D` (the server delivers it to the bare address subscribed to).
    /// The module drops every presence to `D/x` too, but takes available,
    /// unavailable and error presence to `node@D` for pool presence.
    fn presence_from_upstream(
        &mut self,
        a: &Addressed,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let (st, from) = (a.st, a.from);
        if a.from_target {
            if matches!(a.to, To::Bare) {
                self.presence_from_target(st, from, now, rng, out);
            } else {
                tracing::debug!(
                    member = from,
                    to = a.to_attr,
                    "directed presence from the target: the pool is unchanged"
                );
                self.stats.dropped_other += 1;
            }
            return;
        }
        if let Some(id) = self.pool.sticky_instance(jid::bare(from)) {
            out.push(Action::Instance(id, Wire::One(st.bytes.clone())));
            return;
        }
        if st.is_error() {
            self.stats.dropped_other += 1;
            return;
        }
        self.error_reply(st, from, StanzaError::BadRequest, out);
    }

    /// The target's presence to the bare domain: which of its resources
    /// are in the pool, and the subscription through which the server
    /// tells the proxy. A resource joins only if it qualifies (see
    /// `router_admission.rs`).
    fn presence_from_target(
        &mut self,
        st: &Stanza,
        from: &str,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let d = self.cfg.domain.clone();
        let resource = Member::Resource(from.to_owned());
        let has_resource = jid::split(from).1.is_some();
        match st.stanza_type() {
            None if has_resource => self.resource_available(st, from, now, rng, out),
            Some("unavailable") => {
                self.resource_gone(from);
                let was_member = self.pool.remove(&resource);
                self.announce_pool(out);
                let lost = self.fail_member(&resource, now, rng, out);
                if was_member || lost.any() {
                    tracing::info!(
                        member = from,
                        redispatched = lost.redispatched,
                        held = lost.held,
                        answered = lost.answered,
                        "resource left the pool"
                    );
                }
            }
            Some("error") => {
                // As the module: an error from the target drops all.
                let why = "the target's presence is an error: its resources left the pool";
                self.lose_resources(why, Some(from), now, rng, out);
            }
            Some("subscribe") => {
                self.for_server(
                    up(stanza::presence(&d, jid::bare(from), Some("subscribed"))),
                    out,
                );
            }
            Some("probe") => self.for_server(up(stanza::presence(&d, from, None)), out),
            Some("unsubscribed") => {
                // The server sends no more presence of the target: its
                // resources would stay in the pool, unseen when they
                // leave. Out now; requests on them get their answer.
                let why = "the target revoked the proxy's presence subscription: \
                           its resources left the pool, and none will join it \
                           until the subscription is granted again";
                self.lose_resources(why, Some(from), now, rng, out);
            }
            Some("subscribed") => {
                tracing::info!(target_address = jid::bare(from), "subscription granted");
                self.for_server(
                    up(stanza::presence(&d, jid::bare(from), Some("probe"))),
                    out,
                );
            }
            _ => self.stats.dropped_other += 1,
        }
    }

    fn message_from_upstream(&mut self, a: &Addressed, out: &mut Vec<Action>) {
        let (st, from, from_target, to) = (a.st, a.from, a.from_target, &a.to);
        if let Some(id) = self.pool.sticky_instance(jid::bare(from)) {
            out.push(Action::Instance(id, Wire::One(st.bytes.clone())));
            return;
        }
        if st.is_error() {
            self.stats.dropped_other += 1;
            return;
        }
        let err = if from_target && matches!(to, To::Bare | To::Node) {
            StanzaError::BadRequest
        } else {
            StanzaError::FeatureNotImplemented
        };
        self.error_reply(st, from, err, out);
    }

    fn iq_from_upstream(
        &mut self,
        a: &Addressed,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let (st, from) = (a.st, a.from);
        if st.is_iq_response() {
            let bare = matches!(a.to, To::Bare);
            if !(a.from_target && bare && self.qualification_reply(st, from, now, rng, out)) {
                self.reply_from_upstream(st, from, &a.to, now, rng, out);
            }
            return;
        }
        if !st.is_iq_request() {
            // An iq of no known type: malformed.
            self.error_reply(st, from, StanzaError::BadRequest, out);
            return;
        }
        let Some(id) = st.id() else {
            self.error_reply(st, from, StanzaError::BadRequest, out);
            return;
        };
        let req = Request {
            st,
            from,
            to: a.to_attr,
            id,
        };
        match (a.from_target, &a.to) {
            (true, To::Bare | To::Node) => self.error_reply(st, from, StanzaError::BadRequest, out),
            (true, To::Resource(enc)) if self.cfg.client_requests => {
                self.request_from_target(&req, enc, now, out)
            }
            (true, To::Resource(_)) => {
                self.error_reply(st, from, StanzaError::FeatureNotImplemented, out)
            }
            (false, _) => self.inbound_request(&req, Serving::Pool, now, rng, out),
        }
    }

    /// An outside requester's iq get/set: to one member of `serving`,
    /// or the hold when none is eligible.
    fn inbound_request(
        &mut self,
        req: &Request,
        serving: Serving,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let (st, requester) = (req.st, req.from);
        if self.hold.contains(requester, req.id) {
            self.error_reply(st, requester, StanzaError::Conflict, out);
            return;
        }
        let ask = Ask {
            requester: requester.to_owned(),
            orig_to: req.to.to_owned(),
            id: req.id.to_owned(),
            deadline: None,
            trip: Trip {
                get: st.stanza_type() == Some("get"),
                instances_only: matches!(serving, Serving::Instances),
                ..Trip::default()
            },
        };
        self.route(ask, Req::Fresh(st), now, rng, out);
    }

    /// A target resource's iq get/set to `domain/ENC`: on to the decoded
    /// address with `from` = the domain. (The module answers these with
    /// feature-not-implemented.)
    fn request_from_target(
        &mut self,
        req: &Request,
        enc: &str,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let (st, resource, orig_to, id) = (req.st, req.from, req.to, req.id);
        // An unknown or expired token (or, with opaque JAT, anything but
        // a token) names no one: `item-not-found`. An inline ENC that is
        // no JID says what is wrong with it: `jid-malformed`.
        let Some(decoded) = self.jat.decode(enc, now) else {
            self.error_reply(st, resource, StanzaError::ItemNotFound, out);
            return;
        };
        let Some(peer) = jid::validate(&decoded) else {
            let text = format!("The address after {}/ is not a JID", self.cfg.domain);
            self.error_reply_text(st, resource, StanzaError::JidMalformed, Some(&text), out);
            return;
        };
        if jid::bare_eq(jid::bare(&peer), &self.cfg.domain) {
            // Would loop back to us.
            self.error_reply(st, resource, StanzaError::BadRequest, out);
            return;
        }
        let key = Key::PeerReply {
            peer: peer.clone(),
            id: id.to_owned(),
        };
        if self.pending.contains(&key) || self.reserved_for_questions(&peer, id) {
            self.error_reply(st, resource, StanzaError::Conflict, out);
            return;
        }
        let wire = rewrite(st, Some(&peer), Some(&self.cfg.domain));
        if wire.len() > self.cfg.max_write {
            let text = self.too_large_text(wire.len());
            self.error_reply_text(st, resource, StanzaError::PolicyViolation, Some(&text), out);
            return;
        }
        let waiting = Waiting::FromTarget {
            resource: resource.to_owned(),
            orig_to: orig_to.to_owned(),
            peer,
        };
        self.track(key, waiting, now, out);
        self.stats.requests_outbound += 1;
        self.for_server(Action::Upstream(wire), out);
    }

    /// An iq result/error from upstream: a member's reply, or a peer's
    /// reply to a request a target resource or an instance started.
    /// Delivered only if it answers a request in flight, and only if it
    /// comes from the one asked.
    fn reply_from_upstream(
        &mut self,
        st: &Stanza,
        from: &str,
        to: &To,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let id = st.id().unwrap_or_default();
        let Some(entry) = self
            .answered_by_upstream(from, to, id)
            .and_then(|found| Some((found, self.pending.at(found)?)))
        else {
            self.stats.replies_unmatched += 1;
            return;
        };
        let (found, entry) = entry;
        // Only the one asked may answer.
        let expected = match &entry.waiting {
            Waiting::Inbound {
                member: Member::Resource(r),
                ..
            } => r.as_str(),
            Waiting::FromTarget { peer, .. } | Waiting::FromInstance { peer, .. } => peer.as_str(),
            Waiting::Inbound { .. } => "",
        };
        if !same_address(expected, from) {
            if was_lost(&entry.waiting, from) {
                self.stats.replies_late += 1;
            } else {
                self.stats.replies_spoofed += 1;
            }
            return;
        }
        let Some((key, entry)) = self.pending.take(found) else {
            return;
        };
        if let Waiting::Inbound {
            requester, orig_to, ..
        } = &entry.waiting
        {
            if self.is_refusal(st) {
                let refusal = rewrite(st, Some(requester), Some(orig_to));
                self.refused(key, entry, refusal, now, rng, out);
                return;
            }
        }
        self.stats.replies_delivered += 1;
        self.deliver_upstream_reply(st, entry.waiting, out);
    }

    /// Which request in flight a reply from the server to `to` answers,
    /// where it sits in the table, and its entry; `None` when its address
    /// names nothing pending (late, duplicated or spoofed). Looked up
    /// once when the exact form hits, so the reply path reads and removes
    /// the entry without hashing its key again.
    fn answered_by_upstream(&self, from: &str, to: &To, id: &str) -> Option<Found> {
        match to {
            To::Resource(res) => {
                // ENC as the member wrote it back; the server stamped the
                // requester prepared and the member nearly always copies
                // it, so the exact form nearly always hits (and is looked
                // up borrowed, nothing copied). A member that writes it
                // another way (`ALICE@EXAMPLE.TEST/phone`,
                // `alice@example.test./phone`) still finds it through the
                // prepared form, as the module `jid_prep`s what it
                // decodes. Tokens are matched exactly.
                self.pending
                    .find(KeyRef::ToResource { res, id })
                    .or_else(|| {
                        let prepared = self.jat.prepared(res)?;
                        self.pending.find(KeyRef::ToResource { res: &prepared, id })
                    })
            }
            // Requests the target starts go out from the bare domain;
            // nothing waits for a reply to `node@D`.
            To::Node => None,
            // Keyed by the normalised peer (see `request_from_target`).
            // The server stamps `from` prepared, so the exact form nearly
            // always hits and nothing is parsed.
            To::Bare => self
                .pending
                .find(KeyRef::PeerReply { peer: from, id })
                .or_else(|| {
                    let peer = jid::validate(from).filter(|p| p != from)?;
                    self.pending.find(KeyRef::PeerReply { peer: &peer, id })
                }),
        }
    }

    /// Sends a reply from the server on to whoever waited for it, with
    /// the addresses they used.
    fn deliver_upstream_reply(&mut self, st: &Stanza, waiting: Waiting, out: &mut Vec<Action>) {
        match waiting {
            Waiting::Inbound {
                requester,
                orig_to,
                member,
                ..
            } => {
                self.pool.dec_load(&member);
                self.pool.served(&member);
                let ms = self.stats.member(&member);
                ms.answered += 1;
                ms.errors += u64::from(st.is_error());
                let wire = rewrite(st, Some(&requester), Some(&orig_to));
                self.answer_upstream(wire, st.id().unwrap_or_default(), &orig_to, &requester, out);
            }
            Waiting::FromTarget {
                resource, orig_to, ..
            } => {
                let wire = rewrite(st, Some(&resource), Some(&orig_to));
                self.answer_upstream(wire, st.id().unwrap_or_default(), &orig_to, &resource, out);
            }
            Waiting::FromInstance {
                instance,
                orig_from,
                ..
            } => out.push(Action::Instance(
                instance,
                rewrite(st, Some(&orig_from), None),
            )),
        }
    }

    // ----- from instances --------------------------------------------------

    /// A stanza from an instance. Everything goes upstream; only iq
    /// requests get a new `from` so their replies come back through us.
    ///
    /// Addressing follows Prosody 0.12's component port, so an instance
    /// written against Prosody behaves the same behind the proxy:
    ///
    /// - a `from` outside the domain, or one that is no JID: the stream is
    ///   closed with `invalid-from`;
    /// - no `from`: it is the domain (Prosody stamps it, "COMPAT"), written
    ///   into the stanza before it goes upstream;
    /// - no `to`: `bad-request` (modify) back to the instance, results and
    ///   errors dropped;
    /// - a `to` that is no JID: `jid-malformed` (modify) back to the
    ///   instance, errors dropped. The server would answer the same, but
    ///   to the instance's `from`, which routes back to whichever instance
    ///   the sender's address sticks to, not necessarily this one.
    pub fn from_instance(
        &mut self,
        instance: InstanceId,
        st: &Stanza,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        if st.kind == Kind::Other {
            self.stats.dropped_other += 1;
            return;
        }
        let domain = self.cfg.domain.clone();
        let (from, stamp_from) = match st.from() {
            Some(from) => (from, false),
            None => (domain.as_str(), true),
        };
        // The component owns its whole domain: `D`, `D/res`, and nodes such
        // as a MUC's `room@D/nick` or a gateway's `user@D`. Only the domain
        // part is checked, as Prosody's and ejabberd's component ports do,
        // after the address itself is checked: a `from` that fails
        // stringprep or has a part over 1023 bytes names nobody, and a
        // server would refuse it with the whole stream. A trailing dot
        // (`D.`) is the same domain, as servers prep it.
        let from_domain_ok = stamp_from
            || jid::validate(from)
                .is_some_and(|valid| jid::bare_eq(jid::domain(&valid), &self.cfg.domain));
        if !from_domain_ok {
            out.push(Action::CloseInstance(instance, CloseReason::InvalidFrom));
            return;
        }
        let new_from = stamp_from.then_some(domain.as_str());
        let Some(to) = st.to() else {
            self.refuse_without_to(instance, st, from, out);
            return;
        };
        if st.is_iq_response() {
            if let Some((key, entry, refusal)) =
                self.reply_from_instance(instance, st, to, new_from, out)
            {
                self.refused(key, entry, refusal, now, rng, out);
            }
            return;
        }
        // Requests, messages, presence: the address must be one. It is
        // forwarded as the instance wrote it (the server prepares it), but
        // a request's reply is matched on the prepared form.
        let Some(peer) = jid::validate(to) else {
            self.refuse_invalid_to(instance, st, from, to, out);
            return;
        };
        if st.is_iq_request() {
            let Some(id) = st.id().map(str::to_owned) else {
                self.refuse_without_id(instance, st, from, to, out);
                return;
            };
            let token = jat::new_token(rng);
            let new_from = format!("{}/{}", self.cfg.domain, token);
            let waiting = Waiting::FromInstance {
                instance,
                orig_from: from.to_owned(),
                peer,
            };
            let key = Key::ToResource { res: token, id };
            self.track(key.clone(), waiting, now, out);
            self.stats.requests_outbound += 1;
            self.for_server(
                Action::UpstreamRequest(rewrite(st, None, Some(&new_from)), key),
                out,
            );
            return;
        }
        self.for_server(Action::Upstream(rewrite(st, None, new_from)), out);
    }

    /// An instance's stanza without a `to`: `bad-request` back to the
    /// instance; results and errors are only counted.
    fn refuse_without_to(
        &mut self,
        instance: InstanceId,
        st: &Stanza,
        from: &str,
        out: &mut Vec<Action>,
    ) {
        if st.is_error() || st.is_iq_response() {
            self.stats.dropped_unaddressed += 1;
            return;
        }
        self.stats.count(StanzaError::BadRequest);
        out.push(Action::Instance(
            instance,
            Wire::One(stanza::missing_to_reply(&st.name, st.id(), from)),
        ));
    }

    /// An instance's iq request without an id: `bad-request` back to it.
    /// RFC 6120 §8.1.3 requires one: without it the answer could not be
    /// matched, and two such requests would be tracked under one key.
    fn refuse_without_id(
        &mut self,
        instance: InstanceId,
        st: &Stanza,
        from: &str,
        to: &str,
        out: &mut Vec<Action>,
    ) {
        self.stats.count(StanzaError::BadRequest);
        let reply = stanza::error_reply(
            &st.name,
            None,
            to,
            from,
            StanzaError::BadRequest,
            Some("an iq request needs an id"),
        );
        out.push(Action::Instance(instance, Wire::One(reply)));
    }

    /// An instance's stanza whose `to` is no JID: `jid-malformed` back to
    /// the instance (an error is only counted). See
    /// [`Router::from_instance`] for why not to the server.
    fn refuse_invalid_to(
        &mut self,
        instance: InstanceId,
        st: &Stanza,
        from: &str,
        to: &str,
        out: &mut Vec<Action>,
    ) {
        if st.is_error() {
            self.stats.dropped_unaddressed += 1;
            return;
        }
        self.stats.count(StanzaError::JidMalformed);
        let text = format!("The destination address is invalid: {to}");
        out.push(Action::Instance(
            instance,
            Wire::One(stanza::error_reply(
                &st.name,
                st.id(),
                to,
                from,
                StanzaError::JidMalformed,
                Some(&text),
            )),
        ));
    }

    /// An instance's iq result/error: delivered only as the answer to a
    /// request this instance was given. The requester is keyed as the
    /// server stamped it; an instance that writes it another way
    /// (`Alice@Example.test/x`) still finds it through the prepared form.
    /// A refusal (`routing.retry_on`) is not delivered but returned, with
    /// the request it refuses, for [`Router::refused`].
    fn reply_from_instance(
        &mut self,
        instance: InstanceId,
        st: &Stanza,
        to: &str,
        new_from: Option<&str>,
        out: &mut Vec<Action>,
    ) -> Option<(Key, Entry, Wire)> {
        let id = st.id().unwrap_or_default();
        // Looked up borrowed, the exact form first (what the server
        // stamped), then the prepared one; read and removed in place.
        let asked = |pending: &Pending, requester: &str| {
            let found = pending.find(KeyRef::InstanceReply { requester, id })?;
            matches!(
                pending.at(found).map(|e| &e.waiting),
                Some(Waiting::Inbound { member: Member::Instance(i), .. }) if *i == instance
            )
            .then_some(found)
        };
        let found = asked(&self.pending, to).or_else(|| {
            let prepared = jid::validate(to).filter(|p| p != to)?;
            asked(&self.pending, &prepared)
        });
        let Some((key, e)) = found.and_then(|f| self.pending.take(f)) else {
            self.stats.replies_unmatched += 1;
            return None;
        };
        if self.is_refusal(st) {
            return Some((key, e, rewrite(st, None, new_from)));
        }
        if let Some(m) = e.waiting.member() {
            self.pool.dec_load(m);
            self.pool.served(m);
            let ms = self.stats.member(m);
            ms.answered += 1;
            ms.errors += u64::from(st.is_error());
        }
        self.stats.replies_delivered += 1;
        self.for_server(answer_up(rewrite(st, None, new_from)), out);
        None
    }

    // ----- helpers ---------------------------------------------------------

    /// Records a request in flight for `iq_timeout`.
    fn track(&mut self, key: Key, waiting: Waiting, now: Instant, out: &mut Vec<Action>) {
        self.track_until(key, waiting, later(now, self.cfg.iq_timeout), out);
    }

    /// Records a request in flight until `deadline`; a request given up
    /// to make room is answered now.
    fn track_until(
        &mut self,
        key: Key,
        waiting: Waiting,
        deadline: Instant,
        out: &mut Vec<Action>,
    ) {
        self.make_room(out);
        if let Some((old_key, old)) = self.pending.insert(key, Entry { waiting, deadline }) {
            self.answer(old_key, old.waiting, StanzaError::ResourceConstraint, out);
        }
    }

    /// Held and pending requests together stay within `pending_capacity`:
    /// before one more, the one that has waited longest gives up its
    /// place and is answered `resource-constraint` — a held one first
    /// (it has no member yet), else the oldest in flight.
    fn make_room(&mut self, out: &mut Vec<Action>) {
        while self.pending.len() + self.hold.len() >= self.cfg.pending_capacity.get() {
            if let Some(h) = self.hold.pop_oldest() {
                self.answer_ask(&h.ask, StanzaError::ResourceConstraint, out);
            } else if let Some((key, e)) = self.pending.pop_oldest() {
                self.answer(key, e.waiting, StanzaError::ResourceConstraint, out);
            } else {
                break;
            }
        }
    }

    /// Members went away together (out of the pool already): each fails
    /// as [`Router::fail_member`]; the counts summed, for one log line.
    fn fail_members(
        &mut self,
        gone: &[Member],
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> Lost {
        let mut lost = Lost::default();
        for m in gone {
            lost += self.fail_member(m, now, rng, out);
        }
        lost
    }

    /// A member went away (out of the pool already): every request
    /// pending on it follows the re-dispatch rules — to another member,
    /// or the hold, when its type may be sent again
    /// (`routing.redispatch`); else it is answered `recipient-unavailable`.
    /// Logs nothing: the caller knows why the member went, and says it in
    /// one line with these counts.
    fn fail_member(
        &mut self,
        m: &Member,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> Lost {
        self.stats.members.remove(m);
        // Its quarantine, if any, ended with it.
        self.count_quarantined();
        let mut lost = Lost::default();
        for (key, entry) in self.pending.drain_where(|w| w.member() == Some(m)) {
            let outcome = match entry.waiting {
                Waiting::Inbound {
                    requester,
                    orig_to,
                    member,
                    mut trip,
                } if trip.request.is_some() && self.redispatches(trip.get) => {
                    self.stats.requests_redispatched += 1;
                    trip.lost.push(member);
                    let st = trip.request.take();
                    let ask = Ask {
                        requester,
                        orig_to,
                        id: key_id(&key).to_owned(),
                        deadline: Some(entry.deadline),
                        trip,
                    };
                    match st {
                        Some(st) => self.route(ask, Req::Kept(st), now, rng, out),
                        None => {
                            self.answer_unserved(ask, out);
                            Outcome::Answered
                        }
                    }
                }
                waiting => {
                    self.answer(key, waiting, StanzaError::RecipientUnavailable, out);
                    Outcome::Answered
                }
            };
            lost.count(outcome);
        }
        lost
    }

    /// Publishes who is out of the rotation now, after a quarantine
    /// began or ended or a member left.
    fn count_quarantined(&mut self) {
        self.stats.quarantined = self.pool.quarantined().cloned().collect();
    }

    /// Whether a request of this type, in flight to a member that left,
    /// goes to another (`routing.redispatch`).
    fn redispatches(&self, get: bool) -> bool {
        match self.cfg.continuity.redispatch {
            Redispatch::Off => false,
            Redispatch::Get => get,
            Redispatch::All => true,
        }
    }

    /// Whether a request sent to a member keeps its bytes, to be sent
    /// again after a loss or a refusal.
    fn keeps(&self, get: bool) -> bool {
        self.redispatches(get) || !self.cfg.continuity.retry_on.is_empty()
    }

    /// Whether a member's reply refuses the request (`routing.retry_on`).
    fn is_refusal(&self, st: &Stanza) -> bool {
        let retry_on = &self.cfg.continuity.retry_on;
        !retry_on.is_empty()
            && st.is_error()
            && refusal::condition(st).is_some_and(|c| retry_on.contains(&c))
    }

    /// An inbound request goes to an eligible member, or waits for one.
    fn route(
        &mut self,
        mut ask: Ask,
        req: Req,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> Outcome {
        let e = Eligible {
            instances_only: ask.trip.instances_only,
            tried: &ask.trip.tried,
            now,
        };
        let Some(member) = self.pool.pick_eligible(jid::bare(&ask.requester), rng, &e) else {
            return self.hold_or_answer(ask, req, now, rng, out);
        };
        if matches!(member, Member::Resource(_)) && ask.trip.enc.is_none() {
            ask.trip.enc = Some(self.jat.encode(&ask.requester, rng, now));
        }
        self.send_to(ask, req, member, now, out)
    }

    /// No eligible member: the request waits for one (`hold_when_empty`),
    /// no longer than the time it has left; without a hold it is answered.
    fn hold_or_answer(
        &mut self,
        mut ask: Ask,
        req: Req,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> Outcome {
        let hold = self.cfg.continuity.hold_when_empty;
        if hold.is_zero() || ask.deadline.is_some_and(|d| d <= now) {
            self.answer_unserved(ask, out);
            return Outcome::Answered;
        }
        // Released without an RNG at hand: the ENC is made now.
        if !ask.trip.instances_only && self.cfg.target.is_some() && ask.trip.enc.is_none() {
            ask.trip.enc = Some(self.jat.encode(&ask.requester, rng, now));
        }
        ask.trip.request = Some(req.into_kept());
        let until = later(now, hold);
        let until = ask.deadline.map_or(until, |d| d.min(until));
        self.make_room(out);
        self.hold.push(Held { ask, until });
        self.stats.requests_held += 1;
        Outcome::Held
    }

    /// Sends a request to `member`, which may take it, and tracks it.
    fn send_to(
        &mut self,
        mut ask: Ask,
        req: Req,
        member: Member,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Outcome {
        let st = req.stanza();
        let (key, wire) = match &member {
            Member::Resource(r) => {
                let Some(enc) = ask.trip.enc.clone() else {
                    // Not reached: `route` and the hold make the ENC.
                    self.answer_unserved(ask, out);
                    return Outcome::Answered;
                };
                let wire = rewrite_from_full(st, Some(r), &self.cfg.domain, &enc);
                if wire.len() > self.cfg.max_write {
                    let text = self.too_large_text(wire.len());
                    self.answer_ask_text(&ask, StanzaError::PolicyViolation, Some(&text), out);
                    return Outcome::Answered;
                }
                // The id moves into the key (the conflict below puts it
                // back): one allocation fewer per request.
                let key = Key::ToResource {
                    res: enc,
                    id: std::mem::take(&mut ask.id),
                };
                (key, wire)
            }
            Member::Instance(_) => (
                Key::InstanceReply {
                    requester: ask.requester.clone(),
                    id: std::mem::take(&mut ask.id),
                },
                Wire::One(st.bytes.clone()),
            ),
        };
        if self.pending.contains(&key) {
            ask.id = key_id(&key).to_owned();
            self.answer_ask(&ask, StanzaError::Conflict, out);
            return Outcome::Answered;
        }
        if self.keeps(ask.trip.get) {
            ask.trip.request = Some(req.into_kept());
        }
        if let Some(session) = self.pool.session(&member) {
            ask.trip.tried.push(session);
        }
        self.pool.inc_load(&member);
        self.stats.member(&member).routed += 1;
        let deadline = ask
            .deadline
            .unwrap_or_else(|| later(now, self.cfg.iq_timeout));
        let action = match member {
            Member::Resource(_) => Action::UpstreamRequest(wire, key.clone()),
            Member::Instance(i) => Action::Instance(i, wire),
        };
        let waiting = Waiting::Inbound {
            requester: ask.requester,
            orig_to: ask.orig_to,
            member,
            trip: ask.trip,
        };
        self.track_until(key, waiting, deadline, out);
        self.stats.requests_routed += 1;
        self.for_server(action, out);
        Outcome::Sent
    }

    /// A member refused a request (`routing.retry_on`): the refusal
    /// counts against it (quarantine), and the request goes to another
    /// member that has not had it, at most `retry_limit` times; when none
    /// is left, the requester gets `refusal`.
    fn refused(
        &mut self,
        key: Key,
        entry: Entry,
        refusal: Wire,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let Waiting::Inbound {
            requester,
            orig_to,
            member,
            mut trip,
        } = entry.waiting
        else {
            return;
        };
        self.pool.dec_load(&member);
        self.stats.member(&member).errors += 1;
        let c = &self.cfg.continuity;
        let (after, for_, limit) = (c.quarantine_after, c.quarantine_for, c.retry_limit);
        if self.pool.refused(&member, now, after, for_) {
            self.stats.quarantines += 1;
            self.count_quarantined();
            tracing::warn!(
                member = %member,
                refusals = after,
                quarantine_for = ?for_,
                "member refused requests in a row (routing.retry_on): out of the rotation"
            );
        }
        tracing::debug!(member = %member, iq.id = key_id(&key), "member refused a request");
        // Its own buffer: the refusal may wait in the hold.
        trip.refusal = Some(Wire::One(Bytes::copy_from_slice(&refusal.to_bytes())));
        let st = trip.request.take();
        let mut ask = Ask {
            requester,
            orig_to,
            id: key_id(&key).to_owned(),
            deadline: Some(entry.deadline),
            trip,
        };
        match st {
            Some(st) if ask.trip.retries < limit => {
                ask.trip.retries += 1;
                self.stats.requests_retried += 1;
                self.route(ask, Req::Kept(st), now, rng, out);
            }
            _ => self.answer_unserved(ask, out),
        }
    }

    /// The one answer to a request no member will answer: the last
    /// refusal if it was refused, else `recipient-unavailable` if a
    /// member had it, else `service-unavailable`.
    fn answer_unserved(&mut self, ask: Ask, out: &mut Vec<Action>) {
        if let Some(refusal) = ask.trip.refusal {
            self.stats.replies_delivered += 1;
            self.answer_upstream(refusal, &ask.id, &ask.orig_to, &ask.requester, out);
            return;
        }
        let err = if ask.trip.reached() {
            StanzaError::RecipientUnavailable
        } else {
            StanzaError::ServiceUnavailable
        };
        self.answer_ask(&ask, err, out);
    }

    /// An error answer to a request not with a member.
    fn answer_ask(&mut self, ask: &Ask, err: StanzaError, out: &mut Vec<Action>) {
        self.answer_ask_text(ask, err, None, out);
    }

    fn answer_ask_text(
        &mut self,
        ask: &Ask,
        err: StanzaError,
        text: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        self.stats.count(err);
        let reply =
            stanza::error_reply("iq", Some(&ask.id), &ask.orig_to, &ask.requester, err, text);
        self.for_server(answer_up(reply), out);
    }

    /// The one error answer for a request that will get no reply.
    fn answer(&mut self, key: Key, waiting: Waiting, err: StanzaError, out: &mut Vec<Action>) {
        let id = key_id(&key);
        self.stats.count(err);
        match waiting {
            Waiting::Inbound {
                requester,
                orig_to,
                member,
                ..
            } => {
                self.pool.dec_load(&member);
                self.for_server(
                    answer_up(stanza::error_reply(
                        "iq",
                        Some(id),
                        &orig_to,
                        &requester,
                        err,
                        None,
                    )),
                    out,
                );
            }
            Waiting::FromTarget {
                resource, orig_to, ..
            } => self.for_server(
                answer_up(stanza::error_reply(
                    "iq",
                    Some(id),
                    &orig_to,
                    &resource,
                    err,
                    None,
                )),
                out,
            ),
            Waiting::FromInstance {
                instance,
                orig_from,
                peer,
            } => {
                let reply = stanza::error_reply("iq", Some(id), &peer, &orig_from, err, None);
                self.withdraw(&key, out);
                out.push(Action::Instance(instance, Wire::One(reply)));
            }
        }
    }

    /// Takes back an instance's request not yet carried out: it has its
    /// answer, so it must not run. (One held for the server is dropped
    /// when the server is back, in [`Router::upstream_online`].)
    fn withdraw(&mut self, key: &Key, out: &mut Vec<Action>) {
        let before = out.len();
        out.retain(|a| !matches!(a, Action::UpstreamRequest(_, k) if k == key));
        self.withdrawn += (before - out.len()) as u64;
    }

    /// Output for the server: written while a session is up, else held.
    fn for_server(&mut self, a: Action, out: &mut Vec<Action>) {
        if self.online {
            out.push(a);
        } else {
            self.hold(a, out);
        }
    }

    /// Output for the server while it is away: kept until it is back (see
    /// [`Backlog::hold`]). An instance's request that does not fit gets
    /// its one answer now; other output that does not fit is dropped and
    /// counted. Not output for the server: pushed as it is.
    fn hold(&mut self, a: Action, out: &mut Vec<Action>) {
        let (wire, class) = match a {
            Action::Upstream(w) => (w, Class::Other),
            Action::UpstreamAnswer(w) => (w, Class::Answer),
            Action::UpstreamRequest(w, key) => (w, Class::Request(key)),
            other => return out.push(other),
        };
        let request = match &class {
            Class::Request(key) => Some(key.clone()),
            _ => None,
        };
        if self.backlog.hold(wire, class) {
            return;
        }
        let dropped = self.backlog.dropped();
        if dropped.is_power_of_two() {
            tracing::warn!(
                dropped,
                bound = self.backlog.cap(),
                bound.bytes = self.backlog.byte_cap(),
                "upstream is down and its buffer is full: dropping output"
            );
        }
        if let Some(key) = request {
            self.fail_request(&key, StanzaError::ResourceConstraint, out);
        }
    }

    /// An error reply to a stanza from upstream, from the address it was
    /// sent to. Errors are never answered with errors.
    fn error_reply(&mut self, st: &Stanza, from: &str, err: StanzaError, out: &mut Vec<Action>) {
        self.error_reply_text(st, from, err, None, out);
    }

    /// [`Router::error_reply`] with a `<text>` saying what was wrong.
    fn error_reply_text(
        &mut self,
        st: &Stanza,
        from: &str,
        err: StanzaError,
        text: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        if st.is_error() {
            self.stats.dropped_other += 1;
            return;
        }
        let me = st.to().unwrap_or(&self.cfg.domain);
        self.stats.count(err);
        let reply = stanza::error_reply(&st.name, st.id(), me, from, err, text);
        self.for_server(reply_up(st, reply), out);
    }

    /// The text of a `policy-violation` for a stanza of `len` bytes that
    /// the server would not take from us.
    fn too_large_text(&self, len: usize) -> String {
        format!(
            "stanza of {len} bytes (as the server re-serialised it) is over the {} bytes \
             the server takes from a component (limits.upstream_max_write_bytes): not delivered",
            self.cfg.max_write
        )
    }

    /// Writes a reply to `requester` upstream, or, when the server would
    /// refuse it (and close our stream), `policy-violation` in its place:
    /// the request still gets its one answer.
    fn answer_upstream(
        &mut self,
        wire: Wire,
        id: &str,
        orig_to: &str,
        requester: &str,
        out: &mut Vec<Action>,
    ) {
        if wire.len() <= self.cfg.max_write {
            self.for_server(answer_up(wire), out);
            return;
        }
        let err = StanzaError::PolicyViolation;
        let text = self.too_large_text(wire.len());
        self.stats.count(err);
        self.for_server(
            answer_up(stanza::error_reply(
                "iq",
                Some(id),
                orig_to,
                requester,
                err,
                Some(&text),
            )),
            out,
        );
    }
}

fn up(b: impl Into<Wire>) -> Action {
    Action::Upstream(b.into())
}

fn answer_up(b: impl Into<Wire>) -> Action {
    Action::UpstreamAnswer(b.into())
}

/// An error reply made for `st`, a stanza from the server: the answer to
/// a request when `st` is an iq (the router never answers an iq response,
/// so an iq here is a request or one of no known type, and the reply is
/// an iq error either way); for a message or presence, plain output.
fn reply_up(st: &Stanza, reply: impl Into<Wire>) -> Action {
    if st.kind == Kind::Iq {
        answer_up(reply)
    } else {
        up(reply)
    }
}

/// Whether a reply's `from` is the address a request went to: the same
/// string (the server stamps addresses prepared, so this is the rule), or
/// the same once prepared. `expected` is stored prepared.
fn same_address(expected: &str, from: &str) -> bool {
    expected == from || jid::validate(from).is_some_and(|f| f == expected)
}

/// The iq id a key was made with.
fn key_id(key: &Key) -> &str {
    match key {
        Key::ToResource { id, .. } | Key::InstanceReply { id, .. } | Key::PeerReply { id, .. } => {
            id
        }
    }
}

/// Whether `from` is a member that had this request and was lost: its
/// late answer (or the server's bounce from its address) is dropped.
fn was_lost(waiting: &Waiting, from: &str) -> bool {
    let Waiting::Inbound { trip, .. } = waiting else {
        return false;
    };
    trip.lost
        .iter()
        .any(|m| matches!(m, Member::Resource(r) if same_address(r, from)))
}

/// Whether an action writes to the server.
fn is_for_upstream(a: &Action) -> bool {
    matches!(
        a,
        Action::Upstream(_) | Action::UpstreamAnswer(_) | Action::UpstreamRequest(..)
    )
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "router_skipped_tests.rs"]
mod skipped_tests;

#[cfg(test)]
#[path = "router_admission_tests.rs"]
mod admission_tests;

#[cfg(test)]
#[path = "router_chat_tests.rs"]
mod chat_tests;
