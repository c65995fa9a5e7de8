//! Settings: the example `config.toml`, command-line overrides, secrets, and
//! the validation that turns them into one [`Config`].
//!
//! Precedence is CLI flag > config file > built-in default, key by key. The
//! rest of the program only ever sees a fully resolved [`Config`], so no other
//! module has to know where a value came from or re-check its range.
//!
//! Secrets never come from argv (it is world-readable through `/proc` and ends
//! up in shell history): the CLI can only name a file or an environment
//! variable holding one.
//!
//! One file per section (`upstream`, `client_proxy`, `routing`, `instances`,
//! `limits`, `log`, `service`, `metrics`) holds everything about its keys:
//! the clap flags, the serde file form, the resolved struct and its
//! `Default`, `apply_cli`, `resolve` (validation), its piece of
//! [`Config::summary`] and its reload classes ([`ReloadClass`]). Adding a
//! key touches that file and `config.toml`. This file keeps what sections
//! share: [`Config`] and [`Cli`], file loading and TOML error wording,
//! durations, secrets, [`ConfigError`], the shared validators, and the
//! resolve driver that runs the sections in a fixed order (so the first
//! error reported does not depend on how the code is split).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

mod client_proxy;
mod instances;
mod limits;
mod log;
mod metrics;
mod routing;
mod service;
mod tls;
mod upstream;

use client_proxy::RawClientProxy;
pub use client_proxy::{ClientProxyArgs, ClientProxyConfig, JatMode};
use instances::RawInstances;
pub use instances::{InstancesArgs, InstancesConfig};
use limits::RawLimits;
pub use limits::{LimitsArgs, LimitsConfig};
use log::RawLog;
pub use log::{LogArgs, LogConfig, LogFormat};
use metrics::RawMetrics;
pub use metrics::{MetricsArgs, MetricsConfig};
use routing::RawRouting;
pub use routing::{Balancing, Continuity, Redispatch, RoutingArgs, RoutingConfig};
use service::RawService;
pub use service::{ServiceArgs, ServiceConfig};
pub use tls::{CaSource, ClientTls, ServerTls, UpstreamTlsMode};
use upstream::RawUpstream;
pub use upstream::{UpstreamArgs, UpstreamConfig};

/// Process exit status for an unusable configuration (`EX_USAGE` from
/// sysexits.h), so supervisors can tell "fix the config" from a crash.
pub const EXIT_CONFIG: i32 = 64;

/// Used when no upstream secret source is configured, so container setups
/// can inject the secret without a config file entry.
pub const UPSTREAM_SECRET_VAR: &str = "JATPROXY_UPSTREAM_SECRET";
/// Same as [`UPSTREAM_SECRET_VAR`], for the instance listener.
pub const INSTANCE_SECRET_VAR: &str = "JATPROXY_INSTANCE_SECRET";

/// Label used for errors in TOML that did not come from a named file.
const INLINE_LABEL: &str = "config.toml";

/// The longest duration any setting accepts. Every timeout and interval
/// is added to a clock reading somewhere (a deadline, a timer, a backoff
/// step that doubles): a value such as `"300000000000y"` parses, but
/// overflows `Instant + Duration` and panics at the first request. No
/// timeout or interval of a proxy needs more than a day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Built-in defaults, one name space for all of them so the docs in
/// `config.toml` and the tests have a single thing to agree with; each is
/// defined in its section's file.
pub mod defaults {
    pub use super::client_proxy::defaults::*;
    pub use super::instances::defaults::*;
    pub use super::limits::defaults::*;
    pub use super::log::defaults::*;
    pub use super::routing::defaults::*;
    pub use super::service::defaults::*;
    pub use super::upstream::defaults::*;
}

// ---------------------------------------------------------------------------
// Resolved model
// ---------------------------------------------------------------------------

/// Everything the proxy runs with, already validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub upstream: UpstreamConfig,
    pub client_proxy: ClientProxyConfig,
    pub routing: RoutingConfig,
    pub instances: InstancesConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub service: ServiceConfig,
    pub metrics: MetricsConfig,
}

/// How a reload applies a changed key; each section says it for its own
/// keys (`reload_classes`), and [`crate::reload::plan`] collects them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadClass {
    /// At once, nothing dropped.
    Live,
    /// To connections made from now on; established ones keep theirs.
    NextConnection,
    /// By making a new upstream session now.
    Reconnect,
    /// Not at all: the whole reload is refused.
    Restart,
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// A shared secret that cannot leak through `{:?}`/`{}` into logs or panic
/// messages; the only way to the bytes is the deliberately named
/// [`Secret::expose`].
#[derive(Clone)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

/// Where a secret came from, so the startup log can say which one is in use
/// without showing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
    /// Written in the config file itself, or built in code.
    Inline,
}

impl Secret {
    /// For code and tests that already hold the secret; the config file path
    /// goes through [`load`].
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            source: SecretSource::Inline,
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Env(v) => write!(f, "env:{v}"),
            Self::Inline => f.write_str("inline"),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why the configuration cannot be used. Display is always one line that
/// starts with the file location or the offending key, because it is what the
/// operator sees before the process exits with [`EXIT_CONFIG`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or TOML that does not fit the schema (wrong type, unknown
    /// key). `location` is `file` or `file:line`.
    #[error("{location}: {message}")]
    File {
        location: String,
        key: Option<String>,
        message: String,
    },
    /// A value is missing or out of range after merging file and CLI.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// The dotted key (`routing.iq_timeout`) the error is about, if one is
    /// known; lets callers and tests check the blame without parsing text.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } => None,
            Self::File { key, .. } => key.as_deref(),
            Self::Invalid { key, .. } => Some(key),
        }
    }

    fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Command line. Every config key has a flag; a flag that is given wins over
/// the file. Flags are `--section-key`, or just `--key` where that is
/// unambiguous.
#[derive(Clone, Debug, Default, Parser)]
#[command(
    name = "jatproxy",
    version,
    about = "XMPP component proxy (XEP-0114) with Jabber Address Translation"
)]
pub struct Cli {
    /// Config file (TOML). Without it, everything comes from flags and
    /// defaults.
    #[arg(long, value_name = "PATH", env = "JATPROXY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print the effective settings and exit.
    #[arg(long)]
    pub check_config: bool,

    #[command(flatten)]
    pub upstream: UpstreamArgs,
    #[command(flatten)]
    pub client_proxy: ClientProxyArgs,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[command(flatten)]
    pub instances: InstancesArgs,
    #[command(flatten)]
    pub limits: LimitsArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// One wording for bad durations whether they come from the file or a flag.
fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "expected number followed by unit, like 500ms, 30s or 2m";
    humantime::parse_duration(s.trim()).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } if !unit.is_empty() => {
            format!("invalid duration {s:?}: unknown unit {unit:?}; {HINT}")
        }
        humantime::DurationError::NumberOverflow => format!("invalid duration {s:?}: too large"),
        _ => format!("invalid duration {s:?}: {HINT}"),
    })
}

// ---------------------------------------------------------------------------
// Raw file model
// ---------------------------------------------------------------------------

// Every field is optional so that "not in the file" can be told apart from
// "set to the default value" when the CLI is layered on top.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    client_proxy: RawClientProxy,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    instances: RawInstances,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    service: RawService,
    #[serde(default)]
    metrics: RawMetrics,
}

/// The three ways to give a secret, taken out of their section.
struct RawSecretSources {
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
}

/// Durations are strings in the file; a bare number is rejected rather than
/// guessed at (seconds? milliseconds?).
fn de_duration<'de, D>(de: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string like \"30s\" or \"500ms\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
    de.deserialize_str(V).map(Some)
}

impl RawSecretSources {
    fn count(&self) -> usize {
        usize::from(self.secret.is_some())
            + usize::from(self.secret_file.is_some())
            + usize::from(self.secret_env.is_some())
    }
}

impl RawConfig {
    /// A relative `secret_file` in a config file means "next to the config
    /// file": services often run with `/` as working directory, where a
    /// relative path would silently point somewhere else.
    fn rebase_paths(&mut self, dir: &Path) {
        for p in [
            &mut self.upstream.secret_file,
            &mut self.upstream.tls_ca_file,
            &mut self.upstream.tls_cert,
            &mut self.upstream.tls_key,
            &mut self.instances.secret_file,
            &mut self.instances.tls_cert,
            &mut self.instances.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        }
    }

    fn apply_cli(&mut self, cli: &Cli) {
        self.upstream.apply_cli(&cli.upstream);
        self.client_proxy.apply_cli(&cli.client_proxy);
        self.routing.apply_cli(&cli.routing);
        self.instances.apply_cli(&cli.instances);
        self.limits.apply_cli(&cli.limits);
        self.log.apply_cli(&cli.log);
        self.service.apply_cli(&cli.service);
        self.metrics.apply_cli(&cli.metrics);
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// A flag that is given replaces the file's value.
fn over<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
    if let Some(v) = src {
        *dst = Some(v.clone());
    }
}

/// Environment lookup, injectable so tests need not mutate the process
/// environment (which races between test threads).
type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Reads `--config` if given, layers the CLI over it and the defaults under
/// it, and validates the result.
pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
    load_with_env(cli, &process_env)
}

fn load_with_env(cli: &Cli, env: Env<'_>) -> Result<Config, ConfigError> {
    let mut raw = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let mut raw = parse_raw(&text, &path.display().to_string())?;
            if let Some(dir) = path.parent() {
                raw.rebase_paths(dir);
            }
            raw
        }
        None => RawConfig::default(),
    };
    raw.apply_cli(cli);
    resolve(raw, env)
}

/// Parses and validates TOML text without any CLI; secrets named by
/// `secret_env` (and the `JATPROXY_*_SECRET` fallbacks) are read from the
/// process environment, relative `secret_file` paths from the working
/// directory.
pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
    from_toml_str_with_env(s, &process_env)
}

fn from_toml_str_with_env(s: &str, env: Env<'_>) -> Result<Config, ConfigError> {
    resolve(parse_raw(s, INLINE_LABEL)?, env)
}

fn parse_raw(text: &str, label: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| toml_error(text, label, &e))
}

/// Turns toml's multi-line, caret-drawing error into one line that names the
/// file, line and key.
fn toml_error(text: &str, label: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let location = match &span {
        Some(span) => {
            let end = span.start.min(text.len());
            let line = 1 + text.as_bytes()[..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            format!("{label}:{line}")
        }
        None => label.to_owned(),
    };
    let found = span.and_then(|s| key_at(text, s.start));
    // serde quotes with backticks; the rest of our messages use double quotes.
    let msg = e
        .message()
        .trim()
        .replace("expected usize", "expected a non-negative integer")
        .replace('`', "\"");

    let (key, message) = match found {
        Some((path, is_table)) => {
            let key = path.join(".");
            let message = match unknown_field(e.message().trim()) {
                Some((name, expected)) => {
                    let parent = &path[..path.len().saturating_sub(1)];
                    let what = if parent.is_empty() && is_table {
                        format!("unknown section [{name}]")
                    } else if parent.is_empty() {
                        format!("unknown key {name:?} at top level")
                    } else {
                        format!("unknown key {name:?} in [{}]", parent.join("."))
                    };
                    format!("{what} (known: {expected})")
                }
                None => format!("{key}: {msg}"),
            };
            (Some(key), message)
        }
        None => (None, msg),
    };
    ConfigError::File {
        location,
        key,
        message,
    }
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into the name
/// and a plain list.
fn unknown_field(msg: &str) -> Option<(String, String)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected = rest
        .trim_start_matches(", ")
        .trim_start_matches("expected ")
        .trim_start_matches("one of ")
        .replace(" or ", ", ")
        .replace('`', "");
    Some((name.to_owned(), expected))
}

/// The dotted key whose name or value covers byte `pos` of the document, and
/// whether its value is a table. Deepest match wins, so `[routing]` + `foo`
/// yields `routing.foo`.
fn key_at(text: &str, pos: usize) -> Option<(Vec<String>, bool)> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        path: &mut Vec<String>,
        pos: usize,
        best: &mut Option<(Vec<String>, bool)>,
    ) {
        for (k, v) in table {
            path.push(k.get_ref().to_string());
            let (ks, vs) = (k.span(), v.span());
            let hit = ks.contains(&pos) || vs.contains(&pos) || ks.start == pos;
            let sub = v.get_ref().as_table();
            if hit && best.as_ref().is_none_or(|(b, _)| b.len() < path.len()) {
                *best = Some((path.clone(), sub.is_some()));
            }
            if let Some(sub) = sub {
                walk(sub, path, pos, best);
            }
            path.pop();
        }
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut best = None;
    walk(doc.get_ref(), &mut Vec::new(), pos, &mut best);
    best
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn resolve(raw: RawConfig, env: Env<'_>) -> Result<Config, ConfigError> {
    let RawConfig {
        upstream: u,
        client_proxy: c,
        routing: r,
        instances: i,
        limits: l,
        log,
        service,
        metrics,
    } = raw;

    let routing = r.resolve()?;

    let upstream = u.resolve(env)?;
    let client_proxy = c.resolve(&upstream.domain)?;

    let instances = i.resolve(env)?;

    if client_proxy.target_address.is_none() && instances.listen.is_none() {
        return Err(ConfigError::invalid(
            "client_proxy.target_address",
            "no pool: set client_proxy.target_address and/or instances.listen",
        ));
    }

    let limits = l.resolve()?;
    let log = log.resolve()?;
    let service = service.resolve()?;
    let metrics = metrics.resolve()?;

    Ok(Config {
        upstream,
        client_proxy,
        routing,
        instances,
        limits,
        log,
        service,
        metrics,
    })
}

/// Zero would mean "time out at once" (or spin, for backoff), never what an
/// operator meant. Capped like every duration ([`at_most_a_day`]).
fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::invalid(key, "must be greater than zero"))
    } else {
        at_most_a_day(key, d)
    }
}

/// See [`MAX_DURATION`]: refused here, with the key, instead of a panic
/// when the value is first added to a clock reading.
fn at_most_a_day(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d > MAX_DURATION {
        Err(ConfigError::invalid(
            key,
            format!(
                "{} is too long (at most {})",
                fmt_duration(d),
                fmt_duration(MAX_DURATION)
            ),
        ))
    } else {
        Ok(d)
    }
}

/// A token limit under a full JID (3071 bytes) would refuse valid
/// addresses.
fn token_bytes(key: &str, n: usize) -> Result<usize, ConfigError> {
    const MIN_TOKEN_BYTES: usize = 4096;
    if n < MIN_TOKEN_BYTES {
        Err(ConfigError::invalid(
            key,
            format!("{n} is too small (minimum {MIN_TOKEN_BYTES}: a JID may take 3071 bytes)"),
        ))
    } else {
        Ok(n)
    }
}

/// Zero-sized queues and tables would stall or reject everything.
fn nonzero(key: &str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(ConfigError::invalid(key, "must be at least 1"))
    } else {
        Ok(n)
    }
}

/// Exactly one source, or the fallback variable if none; `Ok(None)` lets the
/// caller decide whether a missing secret is an error.
fn resolve_secret(
    section: &str,
    src: RawSecretSources,
    fallback_var: &str,
    env: Env<'_>,
) -> Result<Option<Secret>, ConfigError> {
    let key = format!("{section}.secret");
    if src.count() > 1 {
        let given: Vec<&str> = [
            src.secret.as_ref().map(|_| "secret"),
            src.secret_file.as_ref().map(|_| "secret_file"),
            src.secret_env.as_ref().map(|_| "secret_env"),
        ]
        .into_iter()
        .flatten()
        .collect();
        return Err(ConfigError::invalid(
            &key,
            format!(
                "more than one source given ({}); use exactly one",
                given.join(", ")
            ),
        ));
    }
    if let Some(value) = src.secret {
        if value.is_empty() {
            return Err(ConfigError::invalid(&key, "is empty"));
        }
        return Ok(Some(Secret {
            value,
            source: SecretSource::Inline,
        }));
    }
    if let Some(path) = src.secret_file {
        let key = format!("{section}.secret_file");
        if path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(&key, "is empty (give a path)"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::invalid(&key, format!("cannot read \"{}\": {e}", path.display()))
        })?;
        let value = text.trim_end();
        if value.is_empty() {
            return Err(ConfigError::invalid(
                &key,
                format!("\"{}\" is empty", path.display()),
            ));
        }
        return Ok(Some(Secret {
            value: value.to_owned(),
            source: SecretSource::File(path),
        }));
    }
    if let Some(var) = src.secret_env {
        let key = format!("{section}.secret_env");
        if var.is_empty() {
            return Err(ConfigError::invalid(
                &key,
                "names no variable (empty string)",
            ));
        }
        return read_secret_var(&key, &var, env).map(Some);
    }
    match env(fallback_var) {
        Some(_) => read_secret_var(&key, fallback_var, env).map(Some),
        None => Ok(None),
    }
}

fn read_secret_var(key: &str, var: &str, env: Env<'_>) -> Result<Secret, ConfigError> {
    let value = env(var).ok_or_else(|| {
        ConfigError::invalid(key, format!("environment variable {var} is not set"))
    })?;
    let value = value.into_string().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("environment variable {var} is not valid UTF-8"),
        )
    })?;
    if value.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("environment variable {var} is empty"),
        ));
    }
    Ok(Secret {
        value,
        source: SecretSource::Env(var.to_owned()),
    })
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

impl Config {
    /// Effective settings as one `key=value` line for the startup log, so a
    /// log excerpt alone shows what the process ran with. Secrets appear only
    /// as `[redacted]` plus where they came from.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        self.upstream.write_summary(&mut s);
        self.client_proxy.write_summary(&mut s);
        self.routing.write_summary(&mut s);
        self.instances.write_summary(&mut s);
        self.limits.write_summary(&mut s);
        self.log.write_summary(&mut s);
        self.service.write_summary(&mut s);
        self.metrics.write_summary(&mut s);
        s
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
