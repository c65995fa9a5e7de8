//! `[upstream]`: the XEP-0114 connection to the XMPP server.
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::tls::{self, ClientTls, RawClientTls};
use super::{
    de_duration, fmt_duration, over, parse_duration_arg, positive, resolve_secret, ConfigError,
    Env, RawSecretSources, ReloadClass, Secret, UPSTREAM_SECRET_VAR,
};

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    use std::time::Duration;

    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
    pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
    pub const PING_INTERVAL: Duration = Duration::from_secs(120);
    pub const PING_TIMEOUT: Duration = Duration::from_secs(30);
}

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Upstream (component connection to the XMPP server)")]
pub struct UpstreamArgs {
    /// XMPP server component port, HOST:PORT [upstream.server]
    #[arg(long = "upstream-server", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// Component domain to register as [upstream.domain]
    #[arg(long, visible_alias = "upstream-domain", value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// File holding the component secret [upstream.secret_file]
    #[arg(
        long = "upstream-secret-file",
        id = "upstream_secret_file",
        value_name = "PATH"
    )]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the component secret [upstream.secret_env]
    #[arg(
        long = "upstream-secret-env",
        id = "upstream_secret_env",
        value_name = "VAR"
    )]
    pub secret_env: Option<String>,
    /// TCP connect timeout [upstream.connect_timeout, default 10s]
    #[arg(long = "upstream-connect-timeout", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub connect_timeout: Option<Duration>,
    /// Stream header + handshake timeout [upstream.handshake_timeout, default 10s]
    #[arg(long = "upstream-handshake-timeout", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub handshake_timeout: Option<Duration>,
    /// First reconnect delay [upstream.reconnect_min, default 500ms]
    #[arg(long = "upstream-reconnect-min", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub reconnect_min: Option<Duration>,
    /// Reconnect delay cap [upstream.reconnect_max, default 30s]
    #[arg(long = "upstream-reconnect-max", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub reconnect_max: Option<Duration>,
    /// Keepalive interval [upstream.keepalive_interval, default 60s]
    #[arg(long = "upstream-keepalive-interval", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub keepalive_interval: Option<Duration>,
    /// Ping the server after this long without input [upstream.ping_interval, default 120s]
    #[arg(long = "upstream-ping-interval", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub ping_interval: Option<Duration>,
    /// Reconnect when a ping gets no input for this long [upstream.ping_timeout, default 30s]
    #[arg(long = "upstream-ping-timeout", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub ping_timeout: Option<Duration>,
    /// TLS on the link: none or direct [upstream.tls, default none]
    #[arg(long = "upstream-tls", id = "upstream_tls", value_name = "none|direct")]
    pub tls: Option<String>,
    /// Name the server's certificate must carry [upstream.tls_server_name, default the host of upstream.server]
    #[arg(
        long = "upstream-tls-server-name",
        id = "upstream_tls_server_name",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
    /// PEM file of the CA certificates to trust [upstream.tls_ca_file, default the system's roots]
    #[arg(
        long = "upstream-tls-ca-file",
        id = "upstream_tls_ca_file",
        value_name = "PATH"
    )]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain to present [upstream.tls_cert]
    #[arg(
        long = "upstream-tls-cert",
        id = "upstream_tls_cert",
        value_name = "PATH"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate [upstream.tls_key]
    #[arg(
        long = "upstream-tls-key",
        id = "upstream_tls_key",
        value_name = "PATH"
    )]
    pub tls_key: Option<PathBuf>,
}

/// `[upstream]` as written in the file: every key optional, so "not in the
/// file" is told apart from "set to the default" when flags are layered on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawUpstream {
    server: Option<String>,
    domain: Option<String>,
    secret: Option<String>,
    pub(super) secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    reconnect_min: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    reconnect_max: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    keepalive_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    ping_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    ping_timeout: Option<Duration>,
    tls: Option<String>,
    tls_server_name: Option<String>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
}

/// The XEP-0114 connection to the XMPP server.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Kept as text (not resolved) so DNS is looked up at each connect and
    /// follows address changes across reconnects.
    pub server: String,
    /// Normalised (lowercase, no trailing dot) so it can be compared with
    /// normalised JIDs from the wire.
    pub domain: String,
    pub secret: Secret,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub keepalive_interval: Duration,
    /// After this long without a byte from the server, ping it: a link
    /// that died without a FIN or RST is otherwise noticed only when a
    /// write fails, which can take the kernel many minutes.
    pub ping_interval: Duration,
    /// No byte from the server this long after a ping: the link is dead,
    /// reconnect.
    pub ping_timeout: Duration,
    /// `Some` for `upstream.tls = "direct"`: TLS right after the connect.
    pub tls: Option<ClientTls>,
}

impl RawUpstream {
    fn secret_sources(&mut self) -> RawSecretSources {
        RawSecretSources {
            secret: self.secret.take(),
            secret_file: self.secret_file.take(),
            secret_env: self.secret_env.take(),
        }
    }

    pub(super) fn apply_cli(&mut self, a: &UpstreamArgs) {
        over(&mut self.server, &a.server);
        over(&mut self.domain, &a.domain);
        // A secret source on the command line replaces the file's source
        // rather than conflicting with it, so an operator can point one run
        // at a different secret without editing the file.
        if a.secret_file.is_some() || a.secret_env.is_some() {
            self.secret = None;
            self.secret_file = a.secret_file.clone();
            self.secret_env = a.secret_env.clone();
        }
        over(&mut self.connect_timeout, &a.connect_timeout);
        over(&mut self.handshake_timeout, &a.handshake_timeout);
        over(&mut self.reconnect_min, &a.reconnect_min);
        over(&mut self.reconnect_max, &a.reconnect_max);
        over(&mut self.keepalive_interval, &a.keepalive_interval);
        over(&mut self.ping_interval, &a.ping_interval);
        over(&mut self.ping_timeout, &a.ping_timeout);
        over(&mut self.tls, &a.tls);
        over(&mut self.tls_server_name, &a.tls_server_name);
        over(&mut self.tls_ca_file, &a.tls_ca_file);
        over(&mut self.tls_cert, &a.tls_cert);
        over(&mut self.tls_key, &a.tls_key);
    }

    pub(super) fn resolve(mut self, env: Env<'_>) -> Result<UpstreamConfig, ConfigError> {
        let sources = self.secret_sources();
        let server = self.server.ok_or_else(|| {
            ConfigError::invalid(
                "upstream.server",
                "none given (set it or --upstream-server)",
            )
        })?;
        validate_server(&server)?;
        let tls = tls::client(
            RawClientTls {
                mode: self.tls,
                server_name: self.tls_server_name,
                ca_file: self.tls_ca_file,
                cert: self.tls_cert,
                key: self.tls_key,
            },
            &server,
        )?;
        let domain = self.domain.ok_or_else(|| {
            ConfigError::invalid("upstream.domain", "none given (set it or --domain)")
        })?;
        let domain = validate_domain(&domain)?;
        let secret =
            resolve_secret("upstream", sources, UPSTREAM_SECRET_VAR, env)?.ok_or_else(|| {
                ConfigError::invalid(
                    "upstream.secret",
                    format!("none given (set secret_file, secret_env, or {UPSTREAM_SECRET_VAR})"),
                )
            })?;
        let reconnect_min = positive(
            "upstream.reconnect_min",
            self.reconnect_min.unwrap_or(defaults::RECONNECT_MIN),
        )?;
        let reconnect_max = positive(
            "upstream.reconnect_max",
            self.reconnect_max.unwrap_or(defaults::RECONNECT_MAX),
        )?;
        if reconnect_min > reconnect_max {
            return Err(ConfigError::invalid(
                "upstream.reconnect_min",
                format!(
                    "{} is greater than upstream.reconnect_max ({})",
                    fmt_duration(reconnect_min),
                    fmt_duration(reconnect_max)
                ),
            ));
        }
        Ok(UpstreamConfig {
            connect_timeout: positive(
                "upstream.connect_timeout",
                self.connect_timeout.unwrap_or(defaults::CONNECT_TIMEOUT),
            )?,
            handshake_timeout: positive(
                "upstream.handshake_timeout",
                self.handshake_timeout
                    .unwrap_or(defaults::HANDSHAKE_TIMEOUT),
            )?,
            keepalive_interval: positive(
                "upstream.keepalive_interval",
                self.keepalive_interval
                    .unwrap_or(defaults::KEEPALIVE_INTERVAL),
            )?,
            ping_interval: positive(
                "upstream.ping_interval",
                self.ping_interval.unwrap_or(defaults::PING_INTERVAL),
            )?,
            ping_timeout: positive(
                "upstream.ping_timeout",
                self.ping_timeout.unwrap_or(defaults::PING_TIMEOUT),
            )?,
            reconnect_min,
            reconnect_max,
            server,
            domain,
            secret,
            tls,
        })
    }
}

/// Checks HOST:PORT shape without resolving, so `--check-config` works
/// offline and DNS stays a connect-time concern.
fn validate_server(s: &str) -> Result<(), ConfigError> {
    const KEY: &str = "upstream.server";
    let bad = |why: &str| ConfigError::invalid(KEY, format!("{s:?} {why}"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, rest) = rest
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed '['"))?;
        let port = rest
            .strip_prefix(':')
            .ok_or_else(|| bad("is not HOST:PORT (e.g. 127.0.0.1:5347)"))?;
        (host, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("is not HOST:PORT (e.g. 127.0.0.1:5347)"))?;
        if host.contains(':') {
            return Err(bad("has an IPv6 address without brackets (use [::1]:5347)"));
        }
        (host, port)
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad("has an empty or malformed host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(bad("has an invalid port (1-65535)")),
    }
}

/// Returns the domain in the normalised form JIDs on the wire will have.
fn validate_domain(raw: &str) -> Result<String, ConfigError> {
    const KEY: &str = "upstream.domain";
    let d = raw.trim();
    let d = d.strip_suffix('.').unwrap_or(d);
    let jid = jid::BareJid::new(d)
        .map_err(|_| ConfigError::invalid(KEY, format!("{raw:?} is not a valid domain")))?;
    if jid.node().is_some() {
        return Err(ConfigError::invalid(
            KEY,
            format!("{raw:?} is not a valid domain (it has a node@ part; give only the domain)"),
        ));
    }
    Ok(jid.domain().as_str().to_owned())
}

impl UpstreamConfig {
    /// This section's part of [`super::Config::summary`] (the first).
    pub(super) fn write_summary(&self, s: &mut String) {
        let (u, d) = (self, fmt_duration);
        let _ = write!(
            s,
            "upstream.server={} upstream.domain={} upstream.secret={} upstream.secret_source={} \
             upstream.connect_timeout={} upstream.handshake_timeout={} \
             upstream.reconnect_min={} upstream.reconnect_max={} upstream.keepalive_interval={} \
             upstream.ping_interval={} upstream.ping_timeout={}",
            u.server,
            u.domain,
            u.secret,
            u.secret.source(),
            d(u.connect_timeout),
            d(u.handshake_timeout),
            d(u.reconnect_min),
            d(u.reconnect_max),
            d(u.keepalive_interval),
            d(u.ping_interval),
            d(u.ping_timeout),
        );
        match &u.tls {
            None => s.push_str(" upstream.tls=none"),
            Some(t) => {
                let _ = write!(
                    s,
                    " upstream.tls=direct upstream.tls_server_name={} upstream.tls_ca={}",
                    t.server_name.to_str(),
                    match &t.ca {
                        tls::CaSource::System => "system".to_owned(),
                        tls::CaSource::File(p) => format!("file:{}", p.display()),
                    }
                );
                if let Some(cert) = &t.client_cert {
                    let _ = write!(s, " upstream.tls_cert={}", cert.display());
                }
            }
        }
    }

    /// True when the TLS settings of `new` differ from these: the mode,
    /// the name, or the contents of any file (a renewed CA or client
    /// certificate counts, though its path is the same).
    pub fn tls_changed(&self, new: &Self) -> bool {
        match (&self.tls, &new.tls) {
            (None, None) => false,
            (Some(a), Some(b)) => !a.same_as(b),
            _ => true,
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
        let Self {
            server: _,
            domain: _,
            secret: _,
            connect_timeout: _,
            handshake_timeout: _,
            reconnect_min: _,
            reconnect_max: _,
            keepalive_interval: _,
            ping_interval: _,
            ping_timeout: _,
            tls: _,
        } = self;
        let mut check = |changed: bool, key: &'static str, class: ReloadClass| {
            if changed {
                out(key, class);
            }
        };
        use ReloadClass::*;
        check(self.server != new.server, "upstream.server", Reconnect);
        check(self.domain != new.domain, "upstream.domain", Restart);
        check(self.tls_changed(new), "upstream.tls", Reconnect);
        check(
            self.secret.expose() != new.secret.expose(),
            "upstream.secret",
            Reconnect,
        );
        check(
            self.connect_timeout != new.connect_timeout,
            "upstream.connect_timeout",
            NextConnection,
        );
        check(
            self.handshake_timeout != new.handshake_timeout,
            "upstream.handshake_timeout",
            NextConnection,
        );
        check(
            self.reconnect_min != new.reconnect_min,
            "upstream.reconnect_min",
            NextConnection,
        );
        check(
            self.reconnect_max != new.reconnect_max,
            "upstream.reconnect_max",
            NextConnection,
        );
        check(
            self.keepalive_interval != new.keepalive_interval,
            "upstream.keepalive_interval",
            NextConnection,
        );
        check(
            self.ping_interval != new.ping_interval,
            "upstream.ping_interval",
            NextConnection,
        );
        check(
            self.ping_timeout != new.ping_timeout,
            "upstream.ping_timeout",
            NextConnection,
        );
    }
}
