//! Messages and presence between users and the client pool (issue 14,
//! `client_proxy.messages`, `client_proxy.presence`): the router's side
//! of [`crate::conversation`].
//!
//! With both off nothing here runs, and the module's answers stand
//! (`feature-not-implemented` for messages, `bad-request` for presence).
//! On:
//!
//! - A user's message (or directed presence) to `D`, `node@D` or an
//!   address under them goes to the sender's sticky resource of the
//!   target, `from='node@D/ENC'`: the bare address the user wrote to,
//!   and the user in ENC as for iq requests (a token with opaque JAT).
//!   The resource part the user wrote (`D/res`) is not kept.
//! - What a resource sends to `node@D/ENC` goes to the decoded user,
//!   `from='node@D'`. Only the outer `to`/`from` change: type, id,
//!   `xml:lang`, thread, every child (carbons, MAM results and other
//!   wrappers) pass byte for byte. An ENC that names no one (an expired
//!   token) is bounced to the resource with `item-not-found`; an error
//!   about such a user is dropped and counted.
//! - No resource online: `chat`, `normal`, `groupchat` messages wait up
//!   to `routing.hold_when_empty` for one (then go to the first resource
//!   that joins, which the sender then sticks to), and get
//!   `service-unavailable` when the hold ends or is `0s`; `headline` and
//!   `error` are dropped and counted. Directed presence is dropped.
//! - A user's presence to `D` (or subscription presence to `node@D`) is
//!   the service's: `subscribe` → `subscribed` and the current presence,
//!   `unsubscribe` → `unsubscribed`, `probe` and plain presence → the
//!   current presence (available while the pool has a member). Those who
//!   subscribed or probed hear when the pool goes empty or non-empty.
//!
//! When instances are in the pool, messages and presence from users
//! stick to an instance as before; these rules serve the client pool.

use std::time::Duration;

use rand::RngCore;
use tokio::time::Instant;

use super::{up, Action, Addressed, Router, To};
use crate::conversation::HeldMessage;
use crate::hold::own;
use crate::jat;
use crate::jid;
use crate::pool::Member;
use crate::rewrite::{rewrite, Wire};
use crate::stanza::{self, StanzaError};
use crate::time::later;
use crate::xml::frame::{Kind, Stanza};

/// The conversation settings, as the router reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    /// `client_proxy.messages`.
    pub messages: bool,
    /// `client_proxy.presence`.
    pub presence: bool,
    /// `client_proxy.token_idle_timeout`.
    pub token_idle_timeout: Duration,
}

impl Default for Chat {
    /// Off, as the module: what every existing table row runs with.
    fn default() -> Self {
        Chat {
            messages: false,
            presence: false,
            token_idle_timeout: crate::config::defaults::TOKEN_IDLE_TIMEOUT,
        }
    }
}

/// Conversation counters, for metrics: part of [`super::Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatStats {
    /// Messages and directed presence from users delivered to a resource.
    pub to_target: u64,
    /// Messages and directed presence from resources delivered to users.
    pub from_target: u64,
    /// `headline` and `error` messages from users dropped with no
    /// resource online (an error is never answered with an error).
    pub dropped_no_resource: u64,
    /// Messages from users that waited for a resource
    /// (`routing.hold_when_empty`); those whose hold ended are in
    /// `errors_generated` (`service-unavailable`).
    pub held: u64,
    /// Errors from a resource about a user the ENC no longer names (an
    /// expired token): dropped.
    pub undecodable: u64,
}

impl Router {
    /// Whether this stanza from upstream is a conversation's, and was
    /// handled here: messages and presence, by the settings on.
    pub(super) fn conversation(
        &mut self,
        a: &Addressed,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> bool {
        let on = match a.st.kind {
            Kind::Message => self.cfg.chat.messages,
            Kind::Presence => self.cfg.chat.presence,
            _ => false,
        };
        if !on || self.cfg.target.is_none() {
            return false;
        }
        if a.from_target {
            return match a.to {
                To::Resource(enc) => {
                    self.deliver_to_user(a, enc, now, out);
                    true
                }
                _ => false,
            };
        }
        if self.pool.sticky_instance(jid::bare(a.from)).is_some() {
            return false;
        }
        match a.st.kind {
            Kind::Message => self.message_to_target(a, now, rng, out),
            _ => self.presence_from_user(a, now, rng, out),
        }
        true
    }

    fn message_to_target(
        &mut self,
        a: &Addressed,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        if self.deliver_to_target(a, now, rng, out) {
            return;
        }
        let hold = self.cfg.continuity.hold_when_empty;
        match a.st.stanza_type() {
            Some("headline" | "error") => self.stats.chat.dropped_no_resource += 1,
            _ if hold.is_zero() => {
                self.error_reply(a.st, a.from, StanzaError::ServiceUnavailable, out)
            }
            _ => {
                // The ENC is made now: a release has no RNG at hand.
                let enc = self.jat.encode(a.from, rng, now);
                let held = HeldMessage {
                    stanza: own(a.st),
                    sender: a.from.to_owned(),
                    from: jat::conversation_from(jid::bare(a.to_attr), &enc),
                    until: later(now, hold),
                };
                self.stats.chat.held += 1;
                if let Some(old) = self.conversations.hold(held) {
                    self.unheld(&old, StanzaError::ServiceUnavailable, out);
                }
            }
        }
    }

    /// A resource joined the pool: every held message goes to it, and
    /// each sender sticks to it.
    pub(super) fn release_messages(&mut self, m: &Member, out: &mut Vec<Action>) {
        let (Member::Resource(res), Some(session)) = (m, self.pool.session(m)) else {
            return;
        };
        for h in self.conversations.take_held() {
            let sender = jid::bare(&h.sender);
            self.conversations
                .stick(sender, Some((res.clone(), session)));
            let wire = rewrite(&h.stanza, Some(res), Some(&h.from));
            self.deliver(wire, &h.stanza, &h.sender, true, out);
        }
    }

    /// Held messages whose hold ended get `service-unavailable`.
    pub(super) fn expire_messages(&mut self, now: Instant, out: &mut Vec<Action>) {
        for h in self.conversations.take_expired(now) {
            self.unheld(&h, StanzaError::ServiceUnavailable, out);
        }
    }

    /// Shutdown: every held message gets its error.
    pub(super) fn drain_messages(&mut self, out: &mut Vec<Action>) {
        for h in self.conversations.take_held() {
            self.unheld(&h, StanzaError::RecipientUnavailable, out);
        }
    }

    /// A held message's error, from the address its sender wrote to.
    fn unheld(&mut self, h: &HeldMessage, err: StanzaError, out: &mut Vec<Action>) {
        self.error_reply(&h.stanza, &h.sender, err, out);
    }

    /// Writes a translated stanza, or when the server would refuse it
    /// (and close our stream), `policy-violation` to its `sender`.
    fn deliver(
        &mut self,
        wire: Wire,
        st: &Stanza,
        sender: &str,
        to_target: bool,
        out: &mut Vec<Action>,
    ) {
        if wire.len() > self.cfg.max_write {
            let text = self.too_large_text(wire.len());
            let err = StanzaError::PolicyViolation;
            self.error_reply_text(st, sender, err, Some(&text), out);
            return;
        }
        if to_target {
            self.stats.chat.to_target += 1;
        } else {
            self.stats.chat.from_target += 1;
        }
        self.for_server(Action::Upstream(wire), out);
    }

    fn presence_from_user(
        &mut self,
        a: &Addressed,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let t = a.st.stanza_type();
        let subscription = matches!(
            t,
            Some("subscribe" | "unsubscribe" | "subscribed" | "unsubscribed" | "probe")
        );
        match a.to {
            To::Bare => self.presence_to_service(a, out),
            To::Node if subscription => self.presence_to_service(a, out),
            _ if subscription => self.stats.dropped_other += 1,
            _ => {
                if !self.deliver_to_target(a, now, rng, out) {
                    self.stats.dropped_other += 1;
                }
            }
        }
    }

    /// A user's presence to the service address `D` or `node@D` (bare):
    /// answered by the proxy, never with an error.
    fn presence_to_service(&mut self, a: &Addressed, out: &mut Vec<Action>) {
        let service = jid::bare(a.to_attr).to_owned();
        let user = jid::bare(a.from);
        let current = if self.pool.is_empty() {
            Some("unavailable")
        } else {
            None
        };
        match a.st.stanza_type() {
            Some("subscribe") => {
                self.conversations.subscribe(user, &service);
                let subscribed = stanza::presence(&service, user, Some("subscribed"));
                self.for_server(up(subscribed), out);
                self.for_server(up(stanza::presence(&service, user, current)), out);
            }
            Some("unsubscribe") => {
                self.conversations.unsubscribe(user, &service);
                let unsubscribed = stanza::presence(&service, user, Some("unsubscribed"));
                self.for_server(up(unsubscribed), out);
            }
            Some("probe") => {
                self.conversations.subscribe(user, &service);
                self.for_server(up(stanza::presence(&service, a.from, current)), out);
            }
            None | Some("unavailable") => {
                self.for_server(up(stanza::presence(&service, a.from, current)), out);
            }
            // Errors, and the user's own subscription answers (the
            // service asks for none).
            _ => self.stats.dropped_other += 1,
        }
    }

    /// Sends a user's message or presence to its sticky resource with
    /// JAT; false when no resource is online.
    fn deliver_to_target(
        &mut self,
        a: &Addressed,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(resource) = self.conversation_resource(jid::bare(a.from), now, rng) else {
            return false;
        };
        let enc = self.jat.encode(a.from, rng, now);
        let from = jat::conversation_from(jid::bare(a.to_attr), &enc);
        let wire = rewrite(a.st, Some(&resource), Some(&from));
        self.deliver(wire, a.st, a.from, true, out);
        true
    }

    /// The resource `sender` (bare) talks to: the one it talked to while
    /// that session is in the pool, else one picked among the target's
    /// resources in the rotation.
    fn conversation_resource(
        &mut self,
        sender: &str,
        now: Instant,
        rng: &mut dyn RngCore,
    ) -> Option<String> {
        let pool = &self.pool;
        let alive = |res: &str, session| pool_session(pool, res) == Some(session);
        if let Some(res) = self.conversations.sticky(sender, alive) {
            return Some(res);
        }
        let picked = self.pool.pick_resource(sender, rng, now).and_then(|m| {
            let session = self.pool.session(&m)?;
            match m {
                Member::Resource(res) => Some((res, session)),
                Member::Instance(_) => None,
            }
        });
        self.conversations.stick(sender, picked.clone());
        picked.map(|(res, _)| res)
    }

    /// A target resource's message or presence to `node@D/ENC`: to the
    /// user ENC names, from `node@D`.
    fn deliver_to_user(&mut self, a: &Addressed, enc: &str, now: Instant, out: &mut Vec<Action>) {
        let user = self.jat.decode(enc, now).and_then(|d| jid::validate(&d));
        let Some(user) = user else {
            if a.st.is_error() {
                self.stats.chat.undecodable += 1;
            } else {
                self.error_reply(a.st, a.from, StanzaError::ItemNotFound, out);
            }
            return;
        };
        if jid::bare_eq(jid::domain(&user), &self.cfg.domain) {
            // Would come back to us.
            self.error_reply(a.st, a.from, StanzaError::BadRequest, out);
            return;
        }
        let wire = rewrite(a.st, Some(&user), Some(jid::bare(a.to_attr)));
        self.deliver(wire, a.st, a.from, false, out);
    }

    /// After the pool may have changed: when it went from empty to
    /// non-empty or back, every subscriber hears it from the address it
    /// subscribed to. Called wherever a member joins or leaves.
    ///
    /// Not while the server is away: the resources leave the pool then
    /// only because their presence will be learnt again, and telling
    /// every subscriber "unavailable" then "available" would fill the
    /// upstream buffer with a blip. If the pool is still empty once they
    /// had the chance to come back, the next change is what is told; a
    /// user logging in meanwhile is answered the truth by its probe.
    pub(super) fn announce_pool(&mut self, out: &mut Vec<Action>) {
        if !self.online {
            return;
        }
        let available = !self.pool.is_empty();
        let Some(told) = self.conversations.pool_changed(available) else {
            return;
        };
        if !self.cfg.chat.presence {
            return;
        }
        let ptype = (!available).then_some("unavailable");
        for (user, service) in told {
            self.for_server(up(stanza::presence(&service, &user, ptype)), out);
        }
    }
}

fn pool_session(pool: &crate::pool::Pool, resource: &str) -> Option<crate::pool::Session> {
    pool.session(&Member::Resource(resource.to_owned()))
}
