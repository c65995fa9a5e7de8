//! `[client_proxy]`: the pool made of one account's online resources.
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::{self, Write as _};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::{
    de_duration, fmt_duration, over, parse_duration_arg, positive, ConfigError, ReloadClass,
};
use crate::qualify::{Admission, ResourceFilter};

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    use std::time::Duration;

    pub const CLIENT_REQUESTS: bool = true;
    pub const SUBSCRIBE: bool = true;
    /// See [`crate::qualify::DEFAULT_QUALIFY_TIMEOUT`] for why.
    pub const QUALIFY_TIMEOUT: Duration = crate::qualify::DEFAULT_QUALIFY_TIMEOUT;
    /// Off: messages get the module's `feature-not-implemented`.
    pub const MESSAGES: bool = false;
    /// Off: presence from users gets the module's `bad-request`.
    pub const PRESENCE: bool = false;
    /// An hour: long enough for a conversation's pauses, short enough that
    /// a token does not outlive a conversation by a day.
    pub const TOKEN_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
}

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Client pool (resources of one account)")]
pub struct ClientProxyArgs {
    /// Account whose online resources serve the domain [client_proxy.target_address]
    #[arg(long, value_name = "JID")]
    pub target_address: Option<String>,
    /// Address translation mode [client_proxy.jat, default inline]
    #[arg(long, value_name = "MODE")]
    pub jat: Option<JatMode>,
    /// Route iq requests from the implementing client to requesters
    /// [client_proxy.client_requests, default true]
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub client_requests: Option<bool>,
    /// Ask the target for a presence subscription after each handshake; false: it is
    /// provisioned, only probe [client_proxy.subscribe, default true]
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub subscribe: Option<bool>,
    /// Only resources whose name matches join the pool: a glob (`*`, `?`)
    /// or `re:REGEX` matching the whole name [client_proxy.resources, default any]
    #[arg(long, value_name = "PATTERN")]
    pub resources: Option<String>,
    /// Only resources whose disco#info lists this feature join the pool
    /// [client_proxy.require_feature, default none]
    #[arg(long, value_name = "VAR")]
    pub require_feature: Option<String>,
    /// Time a resource gets to answer that disco#info
    /// [client_proxy.qualify_timeout, default 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub qualify_timeout: Option<Duration>,
    /// Route messages between users and the target's resources through
    /// JAT [client_proxy.messages, default false]
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub messages: Option<bool>,
    /// Answer users' presence to the domain and route directed presence
    /// through JAT [client_proxy.presence, default false]
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub presence: Option<bool>,
    /// An opaque token unused this long no longer resolves
    /// [client_proxy.token_idle_timeout, default 1h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub token_idle_timeout: Option<Duration>,
}

/// `[client_proxy]` as written in the file: every key optional, so "not in the
/// file" is told apart from "set to the default" when flags are layered on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawClientProxy {
    target_address: Option<String>,
    jat: Option<JatMode>,
    client_requests: Option<bool>,
    subscribe: Option<bool>,
    resources: Option<String>,
    require_feature: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    qualify_timeout: Option<Duration>,
    messages: Option<bool>,
    presence: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    token_idle_timeout: Option<Duration>,
}

/// The pool made of one account's online resources (as mod_client_proxy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientProxyConfig {
    /// `None` means no client pool: only instances serve the domain.
    pub target_address: Option<jid::BareJid>,
    pub jat: JatMode,
    pub client_requests: bool,
    /// Ask the target for a presence subscription after each handshake.
    /// Off, the subscription is provisioned out of band and only a `probe`
    /// is sent. The target's own `subscribe` is answered either way.
    pub subscribe: bool,
    /// `resources`, `require_feature`, `qualify_timeout`: which resources
    /// join the pool, as the router reads them. Another process logged
    /// into the target account (a videobridge sharing `focus@auth`) is
    /// kept out this way; the default admits any, as the module does.
    pub admission: Admission,
    /// Messages from users to the domain go to a resource of the target,
    /// sticky per sender, and the resource's answers to `node@D/ENC` back
    /// (issue 14). Off: the module's `feature-not-implemented`.
    pub messages: bool,
    /// Users' presence to the domain is answered (subscription, probe)
    /// and directed presence is routed as messages are. Off: the
    /// module's `bad-request`.
    pub presence: bool,
    /// An opaque (or too long to inline) ENC unused for this long no
    /// longer resolves: a reply to it is bounced, never delivered to
    /// whoever holds the token next. The count is bounded by
    /// `routing.pending_capacity`.
    pub token_idle_timeout: Duration,
}

impl Default for ClientProxyConfig {
    fn default() -> Self {
        Self {
            target_address: None,
            jat: JatMode::default(),
            client_requests: defaults::CLIENT_REQUESTS,
            subscribe: defaults::SUBSCRIBE,
            admission: Admission::default(),
            messages: defaults::MESSAGES,
            presence: defaults::PRESENCE,
            token_idle_timeout: defaults::TOKEN_IDLE_TIMEOUT,
        }
    }
}

/// How the requester's address is carried in `from='D/ENC'`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum JatMode {
    /// ENC is the requester's full JID: what clients written for Prosody's
    /// mod_client_proxy expect.
    #[default]
    Inline,
    /// ENC is a random token: hides requesters from the implementing entity.
    Opaque,
}

impl JatMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::Opaque => "opaque",
        }
    }
}

impl fmt::Display for JatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RawClientProxy {
    pub(super) fn apply_cli(&mut self, a: &ClientProxyArgs) {
        over(&mut self.target_address, &a.target_address);
        over(&mut self.jat, &a.jat);
        over(&mut self.client_requests, &a.client_requests);
        over(&mut self.subscribe, &a.subscribe);
        over(&mut self.resources, &a.resources);
        over(&mut self.require_feature, &a.require_feature);
        over(&mut self.qualify_timeout, &a.qualify_timeout);
        over(&mut self.messages, &a.messages);
        over(&mut self.presence, &a.presence);
        over(&mut self.token_idle_timeout, &a.token_idle_timeout);
    }

    /// `component_domain` is the resolved `upstream.domain`: the target
    /// must not be an address inside it.
    pub(super) fn resolve(self, component_domain: &str) -> Result<ClientProxyConfig, ConfigError> {
        let target_address = self
            .target_address
            .as_deref()
            .map(|t| validate_target(t, component_domain))
            .transpose()?;
        let resources = self
            .resources
            .as_deref()
            .map(validate_resources)
            .transpose()?;
        let require_feature = self.require_feature.map(validate_feature).transpose()?;
        if target_address.is_none() {
            for (set, key) in [
                (resources.is_some(), "client_proxy.resources"),
                (require_feature.is_some(), "client_proxy.require_feature"),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        key,
                        "qualifies client resources, but there is no client pool \
                         (set client_proxy.target_address; instances are not qualified)",
                    ));
                }
            }
        }
        Ok(ClientProxyConfig {
            target_address,
            jat: self.jat.unwrap_or_default(),
            client_requests: self.client_requests.unwrap_or(defaults::CLIENT_REQUESTS),
            subscribe: self.subscribe.unwrap_or(defaults::SUBSCRIBE),
            admission: Admission {
                resources,
                require_feature,
                qualify_timeout: positive(
                    "client_proxy.qualify_timeout",
                    self.qualify_timeout.unwrap_or(defaults::QUALIFY_TIMEOUT),
                )?,
            },
            messages: self.messages.unwrap_or(defaults::MESSAGES),
            presence: self.presence.unwrap_or(defaults::PRESENCE),
            token_idle_timeout: positive(
                "client_proxy.token_idle_timeout",
                self.token_idle_timeout
                    .unwrap_or(defaults::TOKEN_IDLE_TIMEOUT),
            )?,
        })
    }
}

/// A glob, or `re:` and a regex; checked here so that a bad pattern stops
/// `--check-config`, not the first presence.
fn validate_resources(raw: &str) -> Result<ResourceFilter, ConfigError> {
    ResourceFilter::parse(raw)
        .map_err(|e| ConfigError::invalid("client_proxy.resources", e.to_string()))
}

/// A disco feature var is compared byte for byte with what resources
/// list; one with whitespace or control characters is a typo that would
/// keep every resource out.
fn validate_feature(raw: String) -> Result<String, ConfigError> {
    const KEY: &str = "client_proxy.require_feature";
    if raw.is_empty() {
        return Err(ConfigError::invalid(
            KEY,
            "is empty (give a feature var such as \"urn:xmpp:ping\", or leave it unset)",
        ));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(
            KEY,
            format!("{raw:?} contains whitespace or control characters; a feature var has none"),
        ));
    }
    Ok(raw)
}

/// The target must be an account on the XMPP server, outside the component
/// domain: requests are routed to its resources.
fn validate_target(raw: &str, component_domain: &str) -> Result<jid::BareJid, ConfigError> {
    const KEY: &str = "client_proxy.target_address";
    let t = raw.trim();
    // jid strips a trailing root dot only from domain-only JIDs; do it here so
    // `impl@example.test.` means the same account as `impl@example.test`.
    let t = t.strip_suffix('.').unwrap_or(t);
    let jid = jid::BareJid::new(t).map_err(|e| {
        let why = match e {
            jid::Error::ResourceInBareJid => "must be a bare JID (no /resource)".to_owned(),
            other => format!("is not a valid JID ({other})"),
        };
        ConfigError::invalid(KEY, format!("{raw:?} {why}"))
    })?;
    if jid.node().is_none() {
        return Err(ConfigError::invalid(
            KEY,
            format!("{raw:?} must be an account with a node part, like impl@example.test"),
        ));
    }
    if jid.domain().as_str() == component_domain {
        return Err(ConfigError::invalid(
            KEY,
            format!(
                "{raw:?} is inside the component domain {component_domain}; \
                 it must be an account on the XMPP server"
            ),
        ));
    }
    Ok(jid)
}

impl ClientProxyConfig {
    /// This section's part of [`super::Config::summary`].
    pub(super) fn write_summary(&self, s: &mut String) {
        let target = self
            .target_address
            .as_ref()
            .map_or_else(|| "none".to_owned(), ToString::to_string);
        let quoted = |v: Option<&str>| v.map_or_else(|| "none".to_owned(), |v| format!("{v:?}"));
        let _ = write!(
            s,
            " client_proxy.target_address={target} client_proxy.jat={} \
             client_proxy.client_requests={} client_proxy.subscribe={} \
             client_proxy.resources={} client_proxy.require_feature={} \
             client_proxy.qualify_timeout={} client_proxy.messages={} \
             client_proxy.presence={} client_proxy.token_idle_timeout={}",
            self.jat,
            self.client_requests,
            self.subscribe,
            quoted(
                self.admission
                    .resources
                    .as_ref()
                    .map(ResourceFilter::as_str)
            ),
            quoted(self.admission.require_feature.as_deref()),
            fmt_duration(self.admission.qualify_timeout),
            self.messages,
            self.presence,
            fmt_duration(self.token_idle_timeout),
        );
    }

    /// How a reload treats each key of this section that differs in
    /// `new` (see [`crate::reload`]), in the order the keys are logged.
    /// The pattern names every field, without `..`: a key added here and
    /// not classified fails to compile, rather than reloading silently as
    /// "nothing changed" (as `limits.tokenizer` and
    /// `service.worker_threads` once did).
    pub(crate) fn reload_classes(
        &self,
        new: &Self,
        out: &mut dyn FnMut(&'static str, ReloadClass),
    ) {
        let Self {
            target_address: _,
            jat: _,
            client_requests: _,
            subscribe: _,
            admission:
                Admission {
                    resources: _,
                    require_feature: _,
                    qualify_timeout: _,
                },
            messages: _,
            presence: _,
            token_idle_timeout: _,
        } = self;
        let (old, new_a) = (&self.admission, &new.admission);
        let mut check = |changed: bool, key: &'static str, class: ReloadClass| {
            if changed {
                out(key, class);
            }
        };
        use ReloadClass::*;
        check(
            self.target_address != new.target_address,
            "client_proxy.target_address",
            Live,
        );
        check(self.jat != new.jat, "client_proxy.jat", Restart);
        check(
            self.client_requests != new.client_requests,
            "client_proxy.client_requests",
            Live,
        );
        check(
            self.subscribe != new.subscribe,
            "client_proxy.subscribe",
            Live,
        );
        // Who is in the pool was decided under the old rule, and resources
        // refused by it are not tracked: a new upstream session learns
        // every resource's presence again and qualifies it under the new
        // one (requests in flight to resources follow the loss rules).
        check(
            old.resources != new_a.resources,
            "client_proxy.resources",
            Reconnect,
        );
        check(
            old.require_feature != new_a.require_feature,
            "client_proxy.require_feature",
            Reconnect,
        );
        // Applies to the next disco#info asked.
        check(
            old.qualify_timeout != new_a.qualify_timeout,
            "client_proxy.qualify_timeout",
            Live,
        );
        // Apply to the next stanza. Turned off, the subscribers are
        // forgotten and conversations end (see `Router::reload`).
        check(self.messages != new.messages, "client_proxy.messages", Live);
        check(self.presence != new.presence, "client_proxy.presence", Live);
        // Applies to the next decode: a shorter one ends idle tokens.
        check(
            self.token_idle_timeout != new.token_idle_timeout,
            "client_proxy.token_idle_timeout",
            Live,
        );
    }
}
