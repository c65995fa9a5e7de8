//! `[routing]`: how requests are spread over the pool and how long they
//! may stay outstanding.
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::{self, Write as _};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::{
    at_most_a_day, de_duration, fmt_duration, nonzero, over, parse_duration_arg, positive,
    ConfigError, ReloadClass,
};
use crate::stanza::StanzaCondition;

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    use std::time::Duration;

    pub const IQ_TIMEOUT: Duration = Duration::from_secs(30);
    pub const PENDING_CAPACITY: usize = 65536;
    /// Longer than a backend restart (jicofo, a component) takes on a
    /// small host, so the requests that meet it wait for the new member
    /// instead of failing a user's action; short enough that a pool that
    /// is really gone still answers well within a client's patience.
    pub const HOLD_WHEN_EMPTY: Duration = Duration::from_secs(10);
    pub const RETRY_LIMIT: u32 = 2;
    pub const QUARANTINE_AFTER: u32 = 3;
    pub const QUARANTINE_FOR: Duration = Duration::from_secs(60);
}

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Routing")]
pub struct RoutingArgs {
    /// Pool member selection [routing.balancing, default random]
    #[arg(long, value_name = "POLICY")]
    pub balancing: Option<Balancing>,
    /// Time a member gets to answer an iq [routing.iq_timeout, default 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub iq_timeout: Option<Duration>,
    /// Maximum outstanding iq requests [routing.pending_capacity, default 65536]
    #[arg(long, value_name = "N")]
    pub pending_capacity: Option<usize>,
    /// How long a request waits for a member when there is none; 0: it is
    /// answered service-unavailable at once [routing.hold_when_empty, default 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub hold_when_empty: Option<Duration>,
    /// Which requests in flight to a member that leaves go to another
    /// [routing.redispatch, default get]
    #[arg(long, value_name = "WHICH")]
    pub redispatch: Option<Redispatch>,
    /// Stanza error conditions that send a request on to another member,
    /// comma-separated; "" for none [routing.retry_on, default none]
    #[arg(long, value_name = "CONDITIONS", value_delimiter = ',')]
    pub retry_on: Option<Vec<String>>,
    /// At most this many other members are tried after a refusal
    /// [routing.retry_limit, default 2]
    #[arg(long, value_name = "N")]
    pub retry_limit: Option<u32>,
    /// Refusals in a row that take a member out of the rotation; 0: never
    /// [routing.quarantine_after, default 3]
    #[arg(long, value_name = "N")]
    pub quarantine_after: Option<u32>,
    /// How long a member stays out of the rotation
    /// [routing.quarantine_for, default 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub quarantine_for: Option<Duration>,
}

/// `[routing]` as written in the file: every key optional, so "not in the
/// file" is told apart from "set to the default" when flags are layered on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawRouting {
    balancing: Option<Balancing>,
    #[serde(default, deserialize_with = "de_duration")]
    iq_timeout: Option<Duration>,
    pending_capacity: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    hold_when_empty: Option<Duration>,
    redispatch: Option<Redispatch>,
    retry_on: Option<Vec<String>>,
    retry_limit: Option<u32>,
    quarantine_after: Option<u32>,
    #[serde(default, deserialize_with = "de_duration")]
    quarantine_for: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    pub balancing: Balancing,
    pub iq_timeout: Duration,
    /// Bounds memory: when this many requests are outstanding, a new one
    /// takes the place of the oldest, which is answered with
    /// `resource-constraint` (type `wait`), instead of growing the table.
    pub pending_capacity: usize,
    /// `hold_when_empty`, `redispatch`, `retry_on`, `retry_limit`,
    /// `quarantine_after`, `quarantine_for`: one group, as the router
    /// reads them.
    pub continuity: Continuity,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            balancing: Balancing::default(),
            iq_timeout: defaults::IQ_TIMEOUT,
            pending_capacity: defaults::PENDING_CAPACITY,
            continuity: Continuity::default(),
        }
    }
}

/// What keeps requests alive through member changes (issue 13): the
/// routing keys that decide what happens to a request when members come
/// and go, or refuse it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continuity {
    /// How long a request that finds no eligible member waits for one;
    /// zero answers it `service-unavailable` at once, as the module does.
    pub hold_when_empty: Duration,
    pub redispatch: Redispatch,
    /// A member's error with one of these conditions sends the request to
    /// another member; empty, the error is the answer. In the order
    /// written, without repeats.
    pub retry_on: Vec<StanzaCondition>,
    /// Other members tried after a refusal, at most; at least 1 when
    /// `retry_on` is set.
    pub retry_limit: u32,
    /// Refusals (`retry_on`) in a row that take a member out of the
    /// rotation; zero never does.
    pub quarantine_after: u32,
    pub quarantine_for: Duration,
}

/// The configuration defaults (see `config.toml`).
impl Default for Continuity {
    fn default() -> Self {
        Continuity {
            hold_when_empty: defaults::HOLD_WHEN_EMPTY,
            redispatch: Redispatch::default(),
            retry_on: Vec::new(),
            retry_limit: defaults::RETRY_LIMIT,
            quarantine_after: defaults::QUARANTINE_AFTER,
            quarantine_for: defaults::QUARANTINE_FOR,
        }
    }
}

impl Continuity {
    /// mod_client_proxy's behaviour, reachable by configuration
    /// (`hold_when_empty = "0s"`, `redispatch = "none"`, no `retry_on`):
    /// an empty pool and a lost member are answered at once, a refusal is
    /// the answer.
    pub fn off() -> Self {
        Continuity {
            hold_when_empty: Duration::ZERO,
            redispatch: Redispatch::Off,
            retry_on: Vec::new(),
            ..Continuity::default()
        }
    }
}

/// Which requests in flight to a member that leaves are sent to another
/// member; the rest are answered `recipient-unavailable`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Redispatch {
    /// None: every one is answered, as the module does.
    #[serde(rename = "none")]
    #[value(name = "none")]
    Off,
    /// `get` only: a get has no effect, while a `set` may already have
    /// been applied by the member that left, and must not be applied twice.
    #[default]
    Get,
    /// `get` and `set`: for services whose sets are idempotent.
    All,
}

impl Redispatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "none",
            Self::Get => "get",
            Self::All => "all",
        }
    }
}

impl fmt::Display for Redispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which pool member gets the next request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Balancing {
    /// Uniformly random member, as mod_client_proxy does.
    #[default]
    Random,
    /// Members in turn.
    RoundRobin,
    /// Member with the fewest outstanding requests.
    LeastPending,
    /// Rendezvous hash of the requester's bare JID, so one requester keeps
    /// hitting the same member while the pool is stable.
    Sticky,
}

impl Balancing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::RoundRobin => "round-robin",
            Self::LeastPending => "least-pending",
            Self::Sticky => "sticky",
        }
    }
}

impl fmt::Display for Balancing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RawRouting {
    pub(super) fn apply_cli(&mut self, a: &RoutingArgs) {
        over(&mut self.balancing, &a.balancing);
        over(&mut self.iq_timeout, &a.iq_timeout);
        over(&mut self.pending_capacity, &a.pending_capacity);
        over(&mut self.hold_when_empty, &a.hold_when_empty);
        over(&mut self.redispatch, &a.redispatch);
        // `--retry-on ""` clears a list the file set.
        if let Some(names) = &a.retry_on {
            self.retry_on = Some(names.iter().filter(|n| !n.is_empty()).cloned().collect());
        }
        over(&mut self.retry_limit, &a.retry_limit);
        over(&mut self.quarantine_after, &a.quarantine_after);
        over(&mut self.quarantine_for, &a.quarantine_for);
    }

    pub(super) fn resolve(self) -> Result<RoutingConfig, ConfigError> {
        let retry_on = conditions(self.retry_on.unwrap_or_default())?;
        let retry_limit = self.retry_limit.unwrap_or(defaults::RETRY_LIMIT);
        if retry_limit == 0 && !retry_on.is_empty() {
            return Err(ConfigError::invalid(
                "routing.retry_limit",
                "is 0 while routing.retry_on is set: no refusal could be retried \
                 (set retry_limit to 1 or more, or remove retry_on)",
            ));
        }
        let continuity = Continuity {
            hold_when_empty: at_most_a_day(
                "routing.hold_when_empty",
                self.hold_when_empty.unwrap_or(defaults::HOLD_WHEN_EMPTY),
            )?,
            redispatch: self.redispatch.unwrap_or_default(),
            retry_on,
            retry_limit,
            quarantine_after: self.quarantine_after.unwrap_or(defaults::QUARANTINE_AFTER),
            quarantine_for: positive(
                "routing.quarantine_for",
                self.quarantine_for.unwrap_or(defaults::QUARANTINE_FOR),
            )?,
        };
        Ok(RoutingConfig {
            continuity,
            balancing: self.balancing.unwrap_or_default(),
            iq_timeout: positive(
                "routing.iq_timeout",
                self.iq_timeout.unwrap_or(defaults::IQ_TIMEOUT),
            )?,
            pending_capacity: nonzero(
                "routing.pending_capacity",
                self.pending_capacity.unwrap_or(defaults::PENDING_CAPACITY),
            )?,
        })
    }
}

/// `routing.retry_on` names: each an RFC 6120 defined condition, kept
/// once, in the order written.
fn conditions(names: Vec<String>) -> Result<Vec<StanzaCondition>, ConfigError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let c = StanzaCondition::from_name(name.trim()).ok_or_else(|| {
            ConfigError::invalid(
                "routing.retry_on",
                format!(
                    "{name:?} is not a stanza error condition (RFC 6120 8.3.3: {})",
                    StanzaCondition::ALL.map(StanzaCondition::as_str).join(", ")
                ),
            )
        })?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

impl RoutingConfig {
    /// This section's part of [`super::Config::summary`].
    pub(super) fn write_summary(&self, s: &mut String) {
        let k = &self.continuity;
        let retry_on = if k.retry_on.is_empty() {
            "none".to_owned()
        } else {
            let names: Vec<&str> = k.retry_on.iter().map(|c| c.as_str()).collect();
            names.join(",")
        };
        let _ = write!(
            s,
            " routing.balancing={} routing.iq_timeout={} routing.pending_capacity={} \
             routing.hold_when_empty={} routing.redispatch={} routing.retry_on={retry_on} \
             routing.retry_limit={} routing.quarantine_after={} routing.quarantine_for={}",
            self.balancing,
            fmt_duration(self.iq_timeout),
            self.pending_capacity,
            fmt_duration(k.hold_when_empty),
            k.redispatch,
            k.retry_limit,
            k.quarantine_after,
            fmt_duration(k.quarantine_for),
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
            balancing: _,
            iq_timeout: _,
            pending_capacity: _,
            continuity:
                Continuity {
                    hold_when_empty: _,
                    redispatch: _,
                    retry_on: _,
                    retry_limit: _,
                    quarantine_after: _,
                    quarantine_for: _,
                },
        } = self;
        let (old, new_k) = (&self.continuity, &new.continuity);
        let mut check = |changed: bool, key: &'static str, class: ReloadClass| {
            if changed {
                out(key, class);
            }
        };
        use ReloadClass::*;
        check(self.balancing != new.balancing, "routing.balancing", Live);
        check(
            self.iq_timeout != new.iq_timeout,
            "routing.iq_timeout",
            Live,
        );
        check(
            self.pending_capacity != new.pending_capacity,
            "routing.pending_capacity",
            Restart,
        );
        // The router reads each of these when it next decides: a request
        // entering the hold, a loss, a refusal, a quarantine starting.
        // Requests already held or members already quarantined keep the
        // deadline they were given.
        check(
            old.hold_when_empty != new_k.hold_when_empty,
            "routing.hold_when_empty",
            Live,
        );
        check(
            old.redispatch != new_k.redispatch,
            "routing.redispatch",
            Live,
        );
        check(old.retry_on != new_k.retry_on, "routing.retry_on", Live);
        check(
            old.retry_limit != new_k.retry_limit,
            "routing.retry_limit",
            Live,
        );
        check(
            old.quarantine_after != new_k.quarantine_after,
            "routing.quarantine_after",
            Live,
        );
        check(
            old.quarantine_for != new_k.quarantine_for,
            "routing.quarantine_for",
            Live,
        );
    }
}
