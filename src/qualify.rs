//! Which client resources may join the pool (issue 13, "qualification").
//!
//! Any process that logs into the target account becomes a resource of
//! it: a videobridge sharing `focus@auth…` answered most first joins with
//! `feature-not-implemented` (jitsi-meet#14049). A resource is therefore
//! admitted only if its name matches `client_proxy.resources` and, when
//! `client_proxy.require_feature` is set, its `disco#info` lists that
//! feature. Instances are not qualified: they are admitted as before.
//!
//! Pure, like the router that will use it: no I/O, no clock of its own
//! (`now` is passed in), ids for the questions it asks come from the
//! caller. It holds:
//! - [`ResourceFilter`]: the name rule, a glob or (`re:`) a regex that
//!   must match the whole resource;
//! - [`disco_info_request`], [`read_disco_reply`], [`error_condition`]:
//!   the question jatproxy asks a resource and how its answer is read;
//! - [`Caps`] and [`CapsCache`]: a presence's XEP-0115 `ver`, and what is
//!   known about each `ver`, so a reconnecting resource is not asked again;
//! - [`Qualification`] and [`Qualifier`]: one resource's state, `Unknown →
//!   Asking → Qualified | Refused`, and the transitions, each returning
//!   the one [`Step`] the caller carries out;
//! - [`Refusal`]: why a resource was refused, for the one log line.
//!
//! The readers look at stanzas the framer already cut and validated, with
//! rxml's namespace-resolving parser, as `xml::inspect` and
//! `xml::stream_error` read control elements; only namespaces declared
//! inside the stanza are seen (servers declare them on each payload
//! element). They are for the few control stanzas of qualification, never
//! the relay path.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use rxml::{Event, Parse, Parser};
use tokio::time::Instant;

use crate::stanza::StanzaCondition;
use crate::time::later;
use crate::xml::escape;
use crate::xml::frame::NS_STANZA_ERRORS;

/// The namespace of a `disco#info` query (XEP-0030).
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// The namespace of entity capabilities (XEP-0115).
pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";

/// `client_proxy.qualify_timeout` when not set: a client on the same
/// server answers a disco#info in milliseconds; five seconds covers a
/// loaded JVM (jicofo) starting up without keeping a resource out long.
pub const DEFAULT_QUALIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many caps `ver`s [`CapsCache`] remembers. One account is used by a
/// handful of client versions; a resource churning through made-up `ver`s
/// only evicts entries, which costs extra disco#info questions, not memory.
pub const CAPS_CACHE_CAPACITY: NonZeroUsize = match NonZeroUsize::new(256) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// The longest caps `node`, `hash` or `ver` taken as a cache key. A `ver`
/// is a base64 hash (28 bytes for SHA-1, 88 for SHA-512) or, in the legacy
/// form, a version string; the upstream token limit allows megabytes,
/// which must not end up as cache keys.
pub const MAX_CAPS_BYTES: usize = 256;

// ---------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------

/// What a resource must meet to join the pool: `client_proxy.resources`,
/// `client_proxy.require_feature` and `client_proxy.qualify_timeout`.
/// [`Admission::default`] admits every resource at once, as
/// mod_client_proxy does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The name rule; `None` admits any name.
    pub resources: Option<ResourceFilter>,
    /// The disco feature var a resource must list; `None` asks nothing.
    pub require_feature: Option<String>,
    /// How long a resource gets to answer the disco#info.
    pub qualify_timeout: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            resources: None,
            require_feature: None,
            qualify_timeout: DEFAULT_QUALIFY_TIMEOUT,
        }
    }
}

/// `client_proxy.resources`: a glob over the resource name (`*` any run
/// of characters, `?` one character, everything else itself, case
/// sensitive as resources are), or, after `re:`, a regex that must match
/// the whole resource. Compared by the text it was written as.
#[derive(Clone)]
pub struct ResourceFilter {
    source: String,
    rule: Rule,
}

#[derive(Clone)]
enum Rule {
    /// The pattern's characters.
    Glob(Vec<char>),
    /// Anchored at both ends when compiled.
    Regex(regex::Regex),
}

/// Why a `client_proxy.resources` value cannot be used. Display is one
/// line, for `--check-config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Would match only an empty resource, which no session has.
    #[error("{0:?} matches no resource (empty pattern)")]
    Empty(String),
    /// The part after `re:` is no regex the `regex` crate accepts.
    #[error("{pattern:?} is not a valid regex: {reason}")]
    BadRegex { pattern: String, reason: String },
}

impl ResourceFilter {
    /// The prefix that makes a value a regex.
    pub const REGEX_PREFIX: &'static str = "re:";

    pub fn parse(value: &str) -> Result<ResourceFilter, FilterError> {
        let rule = match value.strip_prefix(Self::REGEX_PREFIX) {
            Some("") => return Err(FilterError::Empty(value.to_owned())),
            Some(re) => Rule::Regex(compile_whole(re)?),
            None if value.is_empty() => return Err(FilterError::Empty(value.to_owned())),
            None => Rule::Glob(value.chars().collect()),
        };
        Ok(ResourceFilter {
            source: value.to_owned(),
            rule,
        })
    }

    /// True when `resource` is admitted by name.
    pub fn matches(&self, resource: &str) -> bool {
        match &self.rule {
            Rule::Glob(pattern) => glob_match(pattern, resource),
            Rule::Regex(re) => re.is_match(resource),
        }
    }

    /// The value as configured (`focus*`, `re:focus-[0-9]+`).
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// `re` anchored so that it must match the whole resource: `focus` does
/// not admit `focus2` or `notfocus`. The group keeps an alternation
/// (`a|b`) inside the anchors.
fn compile_whole(re: &str) -> Result<regex::Regex, FilterError> {
    regex::Regex::new(&format!(r"\A(?:{re})\z")).map_err(|e| FilterError::BadRegex {
        pattern: re.to_owned(),
        // The crate's message draws the pattern over several lines; the
        // last one says what is wrong.
        reason: e
            .to_string()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("unparsable")
            .trim()
            .trim_start_matches("error: ")
            .to_owned(),
    })
}

/// Glob matching over characters with one backtrack point (the last `*`):
/// linear in practice, and at worst pattern × name steps, both bounded by
/// the 1023-byte resource limit.
fn glob_match(pattern: &[char], name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == '?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

impl PartialEq for ResourceFilter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for ResourceFilter {}

impl fmt::Debug for ResourceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceFilter({:?})", self.source)
    }
}

impl fmt::Display for ResourceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

// ---------------------------------------------------------------------------
// The question and its answer
// ---------------------------------------------------------------------------

/// The disco#info jatproxy sends a resource (`to`, its full JID) from the
/// proxy `domain`, with the caller's `id`: a plain query, no `node`, so
/// the answer is the entity's own features whatever its caps say.
pub fn disco_info_request(domain: &str, to: &str, id: &str) -> Bytes {
    let mut s = String::with_capacity(160 + domain.len() + to.len() + id.len());
    s.push_str("<iq type='get' id='");
    s.push_str(&escape::attr(id, b'\''));
    s.push_str("' from='");
    s.push_str(&escape::attr(domain, b'\''));
    s.push_str("' to='");
    s.push_str(&escape::attr(to, b'\''));
    s.push_str("'><query xmlns='");
    s.push_str(NS_DISCO_INFO);
    s.push_str("'/></iq>");
    Bytes::from(s)
}

/// Reads a resource's answer to [`disco_info_request`] (the iq matched by
/// id by the caller): `Ok` when it is a result whose disco#info query
/// lists `feature`. An error reply, a result without the query, or one
/// that does not list the feature, is the [`Refusal`] saying which.
pub fn read_disco_reply(reply: &[u8], feature: &str) -> Result<(), Refusal> {
    let mut root_type = None;
    // Inside the disco#info query; seen one at all.
    let (mut in_query, mut had_query) = (false, false);
    let mut listed = false;
    walk(reply, |depth, ev| match ev {
        Ev::Start { ns, local, attr } => match depth {
            1 => root_type = attr("type"),
            2 => {
                in_query = ns == NS_DISCO_INFO && local == "query";
                had_query |= in_query;
            }
            3 if in_query && ns == NS_DISCO_INFO && local == "feature" => {
                listed |= attr("var").as_deref() == Some(feature);
            }
            _ => {}
        },
        Ev::End => {
            if depth == 2 {
                in_query = false;
            }
        }
    });
    match root_type.as_deref() {
        Some("result") if listed => Ok(()),
        Some("result") if had_query => Err(Refusal::FeatureMissing),
        Some("error") => Err(Refusal::DiscoError(error_condition(reply))),
        _ => Err(Refusal::NotDiscoInfo),
    }
}

/// The defined condition of an error stanza: the first child of its
/// `<error>` in the stanza-errors namespace other than `<text>`. `None`
/// when it names none, or one the RFC does not define. The router reads
/// a member's refusal with it too (`routing.retry_on`).
pub fn error_condition(stanza: &[u8]) -> Option<StanzaCondition> {
    let mut in_error = false;
    let mut condition = None;
    walk(stanza, |depth, ev| match ev {
        Ev::Start { ns, local, .. } => {
            if depth == 2 {
                in_error = local == "error";
            } else if depth == 3 && in_error && ns == NS_STANZA_ERRORS && local != "text" {
                // Only the first condition element counts, defined or not.
                if condition.is_none() {
                    condition = Some(StanzaCondition::from_name(local));
                }
            }
        }
        Ev::End => {
            if depth == 2 {
                in_error = false;
            }
        }
    });
    condition.flatten()
}

/// One event of [`walk`]: a start tag (its namespace, local name and a
/// lookup of its unprefixed attributes) or an end tag.
enum Ev<'a> {
    Start {
        ns: &'a str,
        local: &'a str,
        attr: &'a dyn Fn(&str) -> Option<String>,
    },
    End,
}

/// Feeds each start and end tag of `element` to `f` with its depth (the
/// element itself is 1; an end tag carries the depth of the element it
/// closes). The bytes were validated by the framer; a parse failure ends
/// the walk with what was seen.
fn walk(element: &[u8], mut f: impl FnMut(usize, Ev<'_>)) {
    let mut parser = Parser::new();
    let mut input = element;
    let mut depth = 0usize;
    while let Ok(Some(event)) = parser.parse(&mut input, true) {
        match event {
            Event::StartElement(_, (ns, local), attrs) => {
                depth += 1;
                let attr = |name: &str| -> Option<String> {
                    attrs
                        .iter()
                        .find(|((a_ns, a_name), _)| a_ns.is_none() && a_name.as_str() == name)
                        .map(|(_, v)| v.to_string())
                };
                f(
                    depth,
                    Ev::Start {
                        ns: ns.as_str(),
                        local: local.as_str(),
                        attr: &attr,
                    },
                );
            }
            Event::EndElement(_) => {
                f(depth, Ev::End);
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Entity capabilities
// ---------------------------------------------------------------------------

/// A presence's XEP-0115 `<c xmlns='http://jabber.org/protocol/caps'/>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caps {
    pub node: Option<String>,
    /// The hash function; absent in the legacy (pre-1.5) form, whose
    /// `ver` is a software version rather than a hash of the features.
    pub hash: Option<String>,
    pub ver: String,
}

/// What [`CapsCache`] is keyed by: a hashed `ver` stands for its feature
/// set whoever sends it, so the node is left out; a legacy `ver` is only
/// a version, meaningful together with its node (`node#ver`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CapsKey {
    hash_or_node: Option<String>,
    ver: String,
    hashed: bool,
}

impl Caps {
    /// Reads the caps element that is a direct child of `presence`, if
    /// any: `None` without one, without a `ver`, or with a value over
    /// [`MAX_CAPS_BYTES`].
    pub fn of_presence(presence: &[u8]) -> Option<Caps> {
        let mut found: Option<Option<Caps>> = None;
        walk(presence, |depth, ev| {
            let Ev::Start { ns, local, attr } = ev else {
                return;
            };
            if depth == 2 && ns == NS_CAPS && local == "c" && found.is_none() {
                let (node, hash, ver) = (attr("node"), attr("hash"), attr("ver"));
                let fits = [&node, &hash, &ver]
                    .iter()
                    .all(|v| v.as_ref().is_none_or(|v| v.len() <= MAX_CAPS_BYTES));
                let ver = ver.filter(|v| fits && !v.is_empty());
                found = Some(ver.map(|ver| Caps { node, hash, ver }));
            }
        });
        found.flatten()
    }

    pub fn key(&self) -> CapsKey {
        match &self.hash {
            Some(hash) => CapsKey {
                hash_or_node: Some(hash.clone()),
                ver: self.ver.clone(),
                hashed: true,
            },
            None => CapsKey {
                hash_or_node: self.node.clone(),
                ver: self.ver.clone(),
                hashed: false,
            },
        }
    }
}

/// What the disco#info of each caps `ver` said about the required
/// feature: true when it listed it. Only definite answers are kept (a
/// result that lists the feature, or a disco#info that does not): an
/// error or a silence may be passing, and is asked again. The feature is
/// part of the cache: a different one empties it.
///
/// The `ver` is taken on trust, not recomputed from the disco#info
/// (XEP-0115 §5.4): the resources share one account, so a resource that
/// claims another's `ver` is one its owner started.
pub struct CapsCache {
    feature: Option<String>,
    known: LruCache<CapsKey, bool>,
}

impl CapsCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        CapsCache {
            feature: None,
            known: LruCache::new(capacity),
        }
    }

    /// Whether resources with these caps list the feature, if known.
    pub fn get(&mut self, key: &CapsKey) -> Option<bool> {
        self.known.get(key).copied()
    }

    pub fn insert(&mut self, key: CapsKey, lists_feature: bool) {
        self.known.put(key, lists_feature);
    }

    /// Keeps what is known only if it is about this `feature`.
    pub fn set_feature(&mut self, feature: Option<&str>) {
        if self.feature.as_deref() != feature {
            self.known.clear();
            self.feature = feature.map(str::to_owned);
        }
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

// ---------------------------------------------------------------------------
// One resource's state
// ---------------------------------------------------------------------------

/// Why a resource was not admitted; Display is the reason in the one log
/// line the router writes per refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Its name does not match `client_proxy.resources`. Final for the
    /// session: a name does not change.
    Name,
    /// Its disco#info does not list `client_proxy.require_feature`.
    /// Asked again when its caps `ver` changes.
    FeatureMissing,
    /// Its caps `ver` is one whose disco#info did not list the feature
    /// (from [`CapsCache`]; nothing was asked).
    CapsLacksFeature,
    /// It answered the disco#info with an error (with this defined
    /// condition, if any). Asked again on its next presence.
    DiscoError(Option<StanzaCondition>),
    /// It answered with a result that holds no disco#info query. Asked
    /// again on its next presence.
    NotDiscoInfo,
    /// No answer within `client_proxy.qualify_timeout`. Asked again on
    /// its next presence.
    NoAnswer,
}

impl Refusal {
    /// True when any next presence asks again, not only a new caps `ver`:
    /// the answer may have been a passing state (starting up, overloaded).
    pub fn asks_again_on_presence(self) -> bool {
        matches!(
            self,
            Refusal::DiscoError(_) | Refusal::NotDiscoInfo | Refusal::NoAnswer
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Name => f.write_str("its name does not match client_proxy.resources"),
            Refusal::FeatureMissing => {
                f.write_str("its disco#info does not list client_proxy.require_feature")
            }
            Refusal::CapsLacksFeature => f.write_str(
                "its caps ver is one whose disco#info did not list client_proxy.require_feature",
            ),
            Refusal::DiscoError(Some(c)) => write!(f, "it answered disco#info with error {c}"),
            Refusal::DiscoError(None) => {
                f.write_str("it answered disco#info with an error naming no defined condition")
            }
            Refusal::NotDiscoInfo => {
                f.write_str("it answered disco#info with a result holding no disco#info query")
            }
            Refusal::NoAnswer => {
                f.write_str("it did not answer disco#info within client_proxy.qualify_timeout")
            }
        }
    }
}

/// Where one resource session stands. A session that goes unavailable is
/// forgotten by the caller; when it comes back it starts again at
/// [`Qualification::Unknown`] (a new session), where the [`CapsCache`]
/// may admit it without a question.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Qualification {
    /// No presence handled yet.
    #[default]
    Unknown,
    /// A disco#info with `id` is out, answered by `deadline`. `admitted`:
    /// it was qualified before its caps changed, and stays in the pool
    /// while asked again.
    Asking {
        id: String,
        deadline: Instant,
        caps: Option<CapsKey>,
        admitted: bool,
    },
    /// In the pool, with the caps it was qualified with.
    Qualified { caps: Option<CapsKey> },
    /// Not in the pool, for this reason, with the caps it last sent.
    Refused {
        reason: Refusal,
        caps: Option<CapsKey>,
    },
}

impl Qualification {
    /// True when the resource belongs in the pool.
    pub fn is_admitted(&self) -> bool {
        matches!(
            self,
            Qualification::Qualified { .. } | Qualification::Asking { admitted: true, .. }
        )
    }

    /// When [`Qualifier::expire`] has work for this resource.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Qualification::Asking { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The caps the resource last sent (as known here).
    fn caps(&self) -> Option<&CapsKey> {
        match self {
            Qualification::Unknown => None,
            Qualification::Asking { caps, .. }
            | Qualification::Qualified { caps }
            | Qualification::Refused { caps, .. } => caps.as_ref(),
        }
    }
}

/// What the caller does after a transition; at most one thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes.
    Nothing,
    /// Put the resource in the pool.
    Admit,
    /// Send it [`disco_info_request`] with this id.
    Ask(String),
    /// Keep it out of the pool (take it out if it was in); log the reason
    /// once.
    Refuse(Refusal),
}

/// The rules and the caps cache, applied to one resource's
/// [`Qualification`] at a time.
pub struct Qualifier {
    rules: Admission,
    cache: CapsCache,
}

impl Qualifier {
    pub fn new(rules: Admission) -> Self {
        let mut cache = CapsCache::new(CAPS_CACHE_CAPACITY);
        cache.set_feature(rules.require_feature.as_deref());
        Qualifier { rules, cache }
    }

    pub fn rules(&self) -> &Admission {
        &self.rules
    }

    /// New rules for sessions qualified from now on; the cache is kept
    /// only if the required feature is the same.
    pub fn set_rules(&mut self, rules: Admission) {
        self.cache.set_feature(rules.require_feature.as_deref());
        self.rules = rules;
    }

    pub fn cache(&self) -> &CapsCache {
        &self.cache
    }

    /// An available presence from `resource` (with `caps`, if it carried
    /// any). The first one decides by name and asks (or consults the
    /// cache); later ones ask again only when the caps `ver` changed, or
    /// when the last refusal may have been passing
    /// ([`Refusal::asks_again_on_presence`]). `new_id` is called only when
    /// a question is sent.
    pub fn presence(
        &mut self,
        state: &mut Qualification,
        resource: &str,
        caps: Option<&Caps>,
        now: Instant,
        new_id: impl FnOnce() -> String,
    ) -> Step {
        let key = caps.map(Caps::key);
        if *state == Qualification::Unknown {
            let named = self.rules.resources.as_ref();
            if named.is_some_and(|f| !f.matches(resource)) {
                *state = Qualification::Refused {
                    reason: Refusal::Name,
                    caps: key,
                };
                return Step::Refuse(Refusal::Name);
            }
        }
        let changed = key.is_some() && key.as_ref() != state.caps();
        let (ask, admitted) = match state {
            Qualification::Unknown => (true, false),
            Qualification::Asking { admitted, .. } => (changed, *admitted),
            Qualification::Qualified { .. } => (changed, true),
            Qualification::Refused { reason, .. } => (
                *reason != Refusal::Name && (changed || reason.asks_again_on_presence()),
                false,
            ),
        };
        if !ask {
            return Step::Nothing;
        }
        if self.rules.require_feature.is_none() {
            *state = Qualification::Qualified { caps: key };
            return if admitted { Step::Nothing } else { Step::Admit };
        }
        match key.as_ref().and_then(|k| self.cache.get(k)) {
            Some(true) => {
                *state = Qualification::Qualified { caps: key };
                if admitted {
                    Step::Nothing
                } else {
                    Step::Admit
                }
            }
            Some(false) => refuse(state, Refusal::CapsLacksFeature, key),
            None => {
                let id = new_id();
                *state = Qualification::Asking {
                    id: id.clone(),
                    deadline: later(now, self.rules.qualify_timeout),
                    caps: key,
                    admitted,
                };
                Step::Ask(id)
            }
        }
    }

    /// An iq result or error from the resource with `id`. Anything but the
    /// answer to the question out now (a stale id, no question) changes
    /// nothing.
    pub fn reply(&mut self, state: &mut Qualification, id: &str, reply: &[u8]) -> Step {
        let Qualification::Asking {
            id: asked,
            caps,
            admitted,
            ..
        } = state
        else {
            return Step::Nothing;
        };
        if asked != id {
            return Step::Nothing;
        }
        let (caps, admitted) = (caps.take(), *admitted);
        let verdict = match self.rules.require_feature.as_deref() {
            Some(feature) => read_disco_reply(reply, feature),
            // The rule was lifted while asking.
            None => Ok(()),
        };
        if let Some(k) = &caps {
            match verdict {
                Ok(()) => self.cache.insert(k.clone(), true),
                Err(Refusal::FeatureMissing) => self.cache.insert(k.clone(), false),
                Err(_) => {}
            }
        }
        match verdict {
            Ok(()) => {
                *state = Qualification::Qualified { caps };
                if admitted {
                    Step::Nothing
                } else {
                    Step::Admit
                }
            }
            Err(reason) => refuse(state, reason, caps),
        }
    }

    /// The clock reached `now`: a question past its deadline is a
    /// [`Refusal::NoAnswer`].
    pub fn expire(&mut self, state: &mut Qualification, now: Instant) -> Step {
        match state {
            Qualification::Asking { deadline, caps, .. } if *deadline <= now => {
                let caps = caps.take();
                refuse(state, Refusal::NoAnswer, caps)
            }
            _ => Step::Nothing,
        }
    }
}

fn refuse(state: &mut Qualification, reason: Refusal, caps: Option<CapsKey>) -> Step {
    *state = Qualification::Refused { reason, caps };
    Step::Refuse(reason)
}

#[cfg(test)]
#[path = "qualify_tests.rs"]
mod tests;
