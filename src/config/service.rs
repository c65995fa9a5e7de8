//! `[service]`: process-wide settings (shutdown grace, worker threads).
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::{
    at_most_a_day, de_duration, fmt_duration, over, parse_duration_arg, ConfigError, ReloadClass,
};

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    use std::time::Duration;

    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
}

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Logging and service")]
pub struct ServiceArgs {
    /// Longest wait for streams to close after SIGTERM/SIGINT [service.shutdown_grace, default 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub shutdown_grace: Option<Duration>,
    /// Runtime worker threads [service.worker_threads, default: one per CPU]
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,
}

/// `[service]` as written in the file: every key optional, so "not in the
/// file" is told apart from "set to the default" when flags are layered on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawService {
    #[serde(default, deserialize_with = "de_duration")]
    shutdown_grace: Option<Duration>,
    #[serde(default)]
    worker_threads: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// How long in-flight requests get to finish after SIGTERM; zero is
    /// allowed and means stop at once.
    pub shutdown_grace: Duration,
    /// Runtime worker threads; `None` is one per CPU (tokio's default).
    /// Settable so an operator can cap the proxy's share of a machine it
    /// shares with the XMPP server, and so benchmarks can compare 1 and 2.
    pub worker_threads: Option<usize>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            worker_threads: None,
        }
    }
}

impl RawService {
    pub(super) fn apply_cli(&mut self, a: &ServiceArgs) {
        over(&mut self.shutdown_grace, &a.shutdown_grace);
        over(&mut self.worker_threads, &a.worker_threads);
    }

    pub(super) fn resolve(self) -> Result<ServiceConfig, ConfigError> {
        Ok(ServiceConfig {
            shutdown_grace: at_most_a_day(
                "service.shutdown_grace",
                self.shutdown_grace.unwrap_or(defaults::SHUTDOWN_GRACE),
            )?,
            worker_threads: match self.worker_threads {
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "service.worker_threads",
                        "must be at least 1 (leave it out for one per CPU)",
                    ))
                }
                n => n,
            },
        })
    }
}

impl ServiceConfig {
    /// This section's part of [`super::Config::summary`].
    pub(super) fn write_summary(&self, s: &mut String) {
        let _ = write!(
            s,
            " service.shutdown_grace={} service.worker_threads={}",
            fmt_duration(self.shutdown_grace),
            self.worker_threads
                .map_or_else(|| "auto".to_owned(), |n| n.to_string()),
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
            shutdown_grace: _,
            worker_threads: _,
        } = self;
        let mut check = |changed: bool, key: &'static str, class: ReloadClass| {
            if changed {
                out(key, class);
            }
        };
        use ReloadClass::*;
        check(
            self.shutdown_grace != new.shutdown_grace,
            "service.shutdown_grace",
            Live,
        );
        // The runtime is built once, before the proxy starts: accepting a
        // new count would report a change that never happens.
        check(
            self.worker_threads != new.worker_threads,
            "service.worker_threads",
            Restart,
        );
    }
}
