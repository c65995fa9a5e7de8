//! `[client_proxy]`: the pool made of one account's online resources.
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::{self, Write as _};

use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::{over, ConfigError, ReloadClass};

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    pub const CLIENT_REQUESTS: bool = true;
    pub const SUBSCRIBE: bool = true;
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
}

impl Default for ClientProxyConfig {
    fn default() -> Self {
        Self {
            target_address: None,
            jat: JatMode::default(),
            client_requests: defaults::CLIENT_REQUESTS,
            subscribe: defaults::SUBSCRIBE,
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
    }

    /// `component_domain` is the resolved `upstream.domain`: the target
    /// must not be an address inside it.
    pub(super) fn resolve(self, component_domain: &str) -> Result<ClientProxyConfig, ConfigError> {
        let target_address = self
            .target_address
            .as_deref()
            .map(|t| validate_target(t, component_domain))
            .transpose()?;
        Ok(ClientProxyConfig {
            target_address,
            jat: self.jat.unwrap_or_default(),
            client_requests: self.client_requests.unwrap_or(defaults::CLIENT_REQUESTS),
            subscribe: self.subscribe.unwrap_or(defaults::SUBSCRIBE),
        })
    }
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
        let _ = write!(
            s,
            " client_proxy.target_address={target} client_proxy.jat={} \
             client_proxy.client_requests={} client_proxy.subscribe={}",
            self.jat, self.client_requests, self.subscribe,
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
        } = self;
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
    }
}
