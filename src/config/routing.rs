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
    de_duration, fmt_duration, nonzero, over, parse_duration_arg, positive, ConfigError,
    ReloadClass,
};

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    use std::time::Duration;

    pub const IQ_TIMEOUT: Duration = Duration::from_secs(30);
    pub const PENDING_CAPACITY: usize = 65536;
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    pub balancing: Balancing,
    pub iq_timeout: Duration,
    /// Bounds memory: when this many requests are outstanding, a new one
    /// takes the place of the oldest, which is answered with
    /// `resource-constraint` (type `wait`), instead of growing the table.
    pub pending_capacity: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            balancing: Balancing::default(),
            iq_timeout: defaults::IQ_TIMEOUT,
            pending_capacity: defaults::PENDING_CAPACITY,
        }
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
    }

    pub(super) fn resolve(self) -> Result<RoutingConfig, ConfigError> {
        Ok(RoutingConfig {
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

impl RoutingConfig {
    /// This section's part of [`super::Config::summary`].
    pub(super) fn write_summary(&self, s: &mut String) {
        let _ = write!(
            s,
            " routing.balancing={} routing.iq_timeout={} routing.pending_capacity={}",
            self.balancing,
            fmt_duration(self.iq_timeout),
            self.pending_capacity,
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
        } = self;
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
    }
}
