//! `[metrics]`: the Prometheus endpoint.
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use clap::Args;
use serde::Deserialize;

use super::ConfigError;
use super::ReloadClass;

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Logging and service")]
pub struct MetricsArgs {
    /// Serve /metrics, /healthz, /readyz and /status at http://IP:PORT [metrics.listen, default off]
    #[arg(long = "metrics-listen", id = "metrics_listen", value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
}

/// `[metrics]` as written in the file: every key optional, so "not in the
/// file" is told apart from "set to the default" when flags are layered on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawMetrics {
    listen: Option<String>,
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics`; unset means no endpoint (off by
    /// default: it tells anyone who can reach it the pool's members).
    pub listen: Option<SocketAddr>,
}

impl RawMetrics {
    pub(super) fn apply_cli(&mut self, a: &MetricsArgs) {
        if let Some(addr) = a.listen {
            self.listen = Some(addr.to_string());
        }
    }

    pub(super) fn resolve(self) -> Result<MetricsConfig, ConfigError> {
        Ok(MetricsConfig {
            listen: self
                .listen
                .as_deref()
                .map(|s| {
                    s.trim().parse::<SocketAddr>().map_err(|_| {
                        ConfigError::invalid(
                            "metrics.listen",
                            format!("{s:?} is not an IP:PORT socket address (e.g. 127.0.0.1:9348)"),
                        )
                    })
                })
                .transpose()?,
        })
    }
}

impl MetricsConfig {
    /// This section's part of [`super::Config::summary`].
    pub(super) fn write_summary(&self, s: &mut String) {
        match self.listen {
            Some(addr) => {
                let _ = write!(s, " metrics.listen={addr}");
            }
            None => s.push_str(" metrics.listen=none"),
        }
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
        let Self { listen: _ } = self;
        let mut check = |changed: bool, key: &'static str, class: ReloadClass| {
            if changed {
                out(key, class);
            }
        };
        use ReloadClass::*;
        check(self.listen != new.listen, "metrics.listen", Restart);
    }
}
