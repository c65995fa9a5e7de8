//! `[log]`: the tracing filter and line format.
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::{self, Write as _};

use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::{over, ConfigError, ReloadClass};

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    pub const LOG_LEVEL: &str = "info";
}

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Logging and service")]
pub struct LogArgs {
    /// tracing filter, e.g. "info" or "jatproxy=debug,info" [log.level, default info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format [log.format, default text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// `[log]` as written in the file: every key optional, so "not in the
/// file" is told apart from "set to the default" when flags are layered on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive string, checked by
    /// parsing it as one, so `--check-config` and a reload refuse a filter
    /// that would only fail when logging starts.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: defaults::LOG_LEVEL.to_owned(),
            format: LogFormat::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RawLog {
    pub(super) fn apply_cli(&mut self, a: &LogArgs) {
        over(&mut self.level, &a.log_level);
        over(&mut self.format, &a.log_format);
    }

    pub(super) fn resolve(self) -> Result<LogConfig, ConfigError> {
        let level = self
            .level
            .unwrap_or_else(|| defaults::LOG_LEVEL.to_owned())
            .trim()
            .to_owned();
        if level.is_empty() {
            return Err(ConfigError::invalid(
                "log.level",
                "is empty (use e.g. \"info\" or \"jatproxy=debug,info\")",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            let why = e.to_string().replace(['\n', '\r'], " ");
            return Err(ConfigError::invalid(
                "log.level",
                format!(
                    "{level:?} is not a tracing filter: {why} \
                     (use e.g. \"info\" or \"jatproxy=debug,info\")"
                ),
            ));
        }
        Ok(LogConfig {
            level,
            format: self.format.unwrap_or_default(),
        })
    }
}

impl LogConfig {
    /// This section's part of [`super::Config::summary`].
    pub(super) fn write_summary(&self, s: &mut String) {
        let _ = write!(s, " log.level={:?} log.format={}", self.level, self.format);
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
            level: _,
            format: _,
        } = self;
        let mut check = |changed: bool, key: &'static str, class: ReloadClass| {
            if changed {
                out(key, class);
            }
        };
        use ReloadClass::*;
        check(self.level != new.level, "log.level", Live);
        check(self.format != new.format, "log.format", Restart);
    }
}
