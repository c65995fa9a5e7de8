//! Which of the target's resources join the pool: the router's side of
//! [`crate::qualify`] (issue 13, "qualification").
//!
//! A resource that comes online is first held to the name rule
//! (`client_proxy.resources`); with `client_proxy.require_feature` it is
//! then sent a `disco#info` (from the bare domain) and stays out of the
//! pool until its answer lists the feature. An error answer, an answer
//! without the feature, or no answer within `client_proxy.qualify_timeout`
//! keeps it out; the refusal is logged once, as one line. A caps `ver`
//! whose answer is known admits or refuses a reconnecting resource
//! without asking. Instances are not qualified.
//!
//! The questions' ids start with [`QUESTION_ID_PREFIX`] and are never
//! reused. A reply from the target to the bare domain with such an id is
//! the answer to a question, current or stale, and never reaches a
//! requester; a target resource's own request to another resource of the
//! target with such an id is refused `conflict`, so no translated reply
//! can be taken for an answer, nor an answer for a translated reply.
//!
//! The presence, reply and expiry paths of [`Router`] call in here with
//! one line each; everything else about admission is in this file.

use std::collections::BTreeMap;
use std::fmt;

use rand::RngCore;
use tokio::time::Instant;

use super::{Action, Router};
use crate::jid;
use crate::pool::Member;
use crate::qualify::{disco_info_request, Admission, Caps, Qualification, Qualifier, Step};
use crate::rewrite::Wire;
use crate::xml::frame::Stanza;

/// How the id of every disco#info jatproxy asks starts; a counter
/// follows, so no id is used twice in the life of the process.
pub const QUESTION_ID_PREFIX: &str = "jatproxy-qualify-";

/// Admission counters, for metrics: part of [`super::Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Refusals: a resource kept out of the pool, or taken out of it when
    /// its new caps lack the feature. A session refused, asked again on
    /// its next presence and refused again counts twice.
    pub refused: u64,
    /// Resources asked their disco#info now and not in the pool (a
    /// gauge).
    pub qualifying: u64,
}

/// Where each of the target's online resources stands, and the rules
/// and caps cache they are held to.
///
/// A session is known from its first available presence until it goes
/// unavailable, the subscription ends, or the upstream session ends;
/// so the map holds at most the target's online resources.
pub(super) struct Admissions {
    qualifier: Qualifier,
    /// By full JID, as the server stamps it.
    sessions: BTreeMap<String, Qualification>,
    /// The serial of the last question asked.
    asked: u64,
}

impl Admissions {
    pub(super) fn new(rules: Admission) -> Self {
        Admissions {
            qualifier: Qualifier::new(rules),
            sessions: BTreeMap::new(),
            asked: 0,
        }
    }

    /// Resources waiting for their answer and not in the pool.
    fn qualifying(&self) -> u64 {
        let n = self
            .sessions
            .values()
            .filter(|q| matches!(q, Qualification::Asking { .. }) && !q.is_admitted())
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The earliest deadline of a question out now.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(Qualification::deadline)
            .min()
    }
}

impl fmt::Debug for Admissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admissions")
            .field("rules", self.qualifier.rules())
            .field("sessions", &self.sessions)
            .field("caps_known", &self.qualifier.cache().len())
            .field("asked", &self.asked)
            .finish()
    }
}

impl Router {
    /// New admission rules, from a reload. They apply to sessions whose
    /// first presence comes after it: who is in the pool was decided
    /// under the old rules, and a resource refused by them is not asked
    /// again until it comes back as a new session (a reload that changes
    /// `resources` or `require_feature` makes a new upstream session, so
    /// every resource is one). A new `qualify_timeout` applies to the
    /// next question.
    pub(super) fn set_admission(&mut self, rules: Admission) {
        self.admission.qualifier.set_rules(rules);
    }

    /// An available presence from `from`, a resource of the target, to
    /// the bare domain: it joins the pool, is asked its disco#info, is
    /// refused, or (a presence that changes nothing) stays as it is.
    pub(super) fn resource_available(
        &mut self,
        st: &Stanza,
        from: &str,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let caps = Caps::of_presence(&st.bytes);
        let resource = jid::split(from).1.unwrap_or_default();
        let adm = &mut self.admission;
        let state = adm.sessions.entry(from.to_owned()).or_default();
        let asked = &mut adm.asked;
        let step = adm
            .qualifier
            .presence(state, resource, caps.as_ref(), now, || {
                *asked += 1;
                format!("{QUESTION_ID_PREFIX}{asked}")
            });
        self.carry_out(from, step, now, rng, out);
    }

    /// A resource of the target went unavailable: forgotten, whatever it
    /// was being asked (a late answer is dropped). When it comes back it
    /// is a new session.
    pub(super) fn resource_gone(&mut self, from: &str) {
        if self.admission.sessions.remove(from).is_some() {
            self.stats.admission.qualifying = self.admission.qualifying();
        }
    }

    /// Takes every client resource out of the pool and forgets every
    /// session (the subscription or the upstream session ended, or the
    /// target changed): the members that left, for their requests to be
    /// answered.
    pub(super) fn clear_resources(&mut self) -> Vec<Member> {
        self.admission.sessions.clear();
        self.stats.admission.qualifying = 0;
        self.pool.clear_resources()
    }

    /// An iq result or error from `from` (the target) to the bare domain.
    /// Returns true when its id is a question's: then it was the answer
    /// to the question out to `from` now, and decides, or it is stale
    /// (the session was forgotten, timed out or asked again) and is
    /// dropped and counted unmatched. Either way it goes no further.
    pub(super) fn qualification_reply(
        &mut self,
        st: &Stanza,
        from: &str,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(id) = st.id().filter(|id| id.starts_with(QUESTION_ID_PREFIX)) else {
            return false;
        };
        let adm = &mut self.admission;
        let state = adm.sessions.get_mut(from).filter(
            |q| matches!(q, Qualification::Asking { id: asked, .. } if asked.as_str() == id),
        );
        let Some(state) = state else {
            self.stats.replies_unmatched += 1;
            return true;
        };
        let step = adm.qualifier.reply(state, id, &st.bytes);
        self.carry_out(from, step, now, rng, out);
        true
    }

    /// True when a request to `peer` with `id` could have its reply taken
    /// for the answer to a question: `peer` is the target, `id` has the
    /// questions' prefix. Such a request is refused `conflict`.
    pub(super) fn reserved_for_questions(&self, peer: &str, id: &str) -> bool {
        id.starts_with(QUESTION_ID_PREFIX)
            && self
                .cfg
                .target
                .as_deref()
                .is_some_and(|t| jid::bare_eq(jid::bare(peer), t))
    }

    /// Refuses every resource whose question is past its deadline; each
    /// is asked again on its next presence.
    pub(super) fn expire_questions(
        &mut self,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        if self.admission.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let late: Vec<String> = self
            .admission
            .sessions
            .iter()
            .filter(|(_, q)| q.deadline().is_some_and(|d| d <= now))
            .map(|(jid, _)| jid.clone())
            .collect();
        for from in late {
            let adm = &mut self.admission;
            let Some(state) = adm.sessions.get_mut(&from) else {
                continue;
            };
            let step = adm.qualifier.expire(state, now);
            self.carry_out(&from, step, now, rng, out);
        }
    }

    /// Does what the qualifier decided for resource `from`.
    fn carry_out(
        &mut self,
        from: &str,
        step: Step,
        now: Instant,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) {
        let m = Member::Resource(from.to_owned());
        match step {
            Step::Nothing => {}
            Step::Admit => {
                if !self.pool.contains(&m) {
                    tracing::info!(member = from, "resource joined the pool");
                }
                self.member_joined(m, now, out);
            }
            Step::Ask(id) => {
                tracing::debug!(
                    member = from,
                    iq.id = id.as_str(),
                    "asking the resource's disco#info before it joins the pool"
                );
                let question = disco_info_request(&self.cfg.domain, from, &id);
                self.for_server(Action::Upstream(Wire::from(question)), out);
            }
            Step::Refuse(reason) => {
                self.stats.admission.refused += 1;
                if self.pool.remove(&m) {
                    self.announce_pool(out);
                    // Asked again (its caps changed) and refused now: a
                    // loss, in the same one line.
                    let lost = self.fail_member(&m, now, rng, out);
                    tracing::info!(
                        member = from,
                        reason = %reason,
                        redispatched = lost.redispatched,
                        held = lost.held,
                        answered = lost.answered,
                        "resource refused: it leaves the pool"
                    );
                } else {
                    tracing::info!(
                        member = from,
                        reason = %reason,
                        "resource refused: it does not join the pool"
                    );
                }
            }
        }
        self.stats.admission.qualifying = self.admission.qualifying();
    }
}
