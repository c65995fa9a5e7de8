//! `[instances]`: the proxy's own XEP-0114 listener for component
//! instances.
//!
//! Everything about this section's keys in one place: defaults, flags, file
//! form, resolved form, validation, summary piece and reload classes. It
//! uses only the shared helpers in `config/mod.rs`, which alone parses and
//! resolves it; `reload` reads its `reload_classes`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::tls::{self, ServerTls};
use super::{
    de_duration, fmt_duration, nonzero, over, parse_duration_arg, positive, resolve_secret,
    ConfigError, Env, RawSecretSources, ReloadClass, Secret, INSTANCE_SECRET_VAR,
};

/// Built-in defaults for this section (also [`super::defaults`]).
pub mod defaults {
    use std::time::Duration;

    pub const MAX_CONNECTIONS: usize = 64;
    pub const MAX_UNAUTHENTICATED: usize = 16;
    pub const INSTANCE_QUEUE: usize = 1024;
    /// 4 MiB: thousands of ordinary stanzas, several of the largest an
    /// upstream stanza may be (2 MiB), while 64 stalled instances pin at
    /// most 256 MiB, not 64 × 512 MiB.
    pub const INSTANCE_QUEUE_BYTES: usize = 4 * 1024 * 1024;
    pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
}

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Instance listener (XEP-0114 for component instances)")]
pub struct InstancesArgs {
    /// Listen address for component instances, IP:PORT [instances.listen]
    #[arg(long = "instances-listen", value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// File holding the instances' secret [instances.secret_file]
    #[arg(
        long = "instance-secret-file",
        id = "instance_secret_file",
        visible_alias = "instances-secret-file",
        value_name = "PATH"
    )]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the instances' secret [instances.secret_env]
    #[arg(
        long = "instance-secret-env",
        id = "instance_secret_env",
        visible_alias = "instances-secret-env",
        value_name = "VAR"
    )]
    pub secret_env: Option<String>,
    /// Maximum instance connections [instances.max_connections, default 64]
    #[arg(long = "instances-max-connections", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Maximum connections still in handshake [instances.max_unauthenticated, default 16]
    #[arg(long = "instances-max-unauthenticated", value_name = "N")]
    pub max_unauthenticated: Option<usize>,
    /// Outgoing stanza queue per instance [instances.queue, default 1024]
    #[arg(long = "instances-queue", value_name = "N")]
    pub queue: Option<usize>,
    /// Outgoing bytes queued per instance [instances.queue_bytes, default 4194304]
    #[arg(long = "instances-queue-bytes", value_name = "BYTES")]
    pub queue_bytes: Option<usize>,
    /// Cut an instance taking no bytes this long while its queue is full [instances.stall_timeout, default 5s]
    #[arg(long = "instances-stall-timeout", value_name = "DURATION", value_parser = parse_duration_arg)]
    pub stall_timeout: Option<Duration>,
    /// PEM certificate chain: the listener speaks direct TLS [instances.tls_cert]
    #[arg(
        long = "instances-tls-cert",
        id = "instances_tls_cert",
        value_name = "PATH"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of instances.tls_cert [instances.tls_key]
    #[arg(
        long = "instances-tls-key",
        id = "instances_tls_key",
        value_name = "PATH"
    )]
    pub tls_key: Option<PathBuf>,
}

/// `[instances]` as written in the file: every key optional, so "not in the
/// file" is told apart from "set to the default" when flags are layered on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawInstances {
    listen: Option<String>,
    secret: Option<String>,
    pub(super) secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    max_connections: Option<usize>,
    max_unauthenticated: Option<usize>,
    queue: Option<usize>,
    queue_bytes: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    stall_timeout: Option<Duration>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
}

/// The proxy's own XEP-0114 listener for component instances.
#[derive(Clone, Debug)]
pub struct InstancesConfig {
    /// `None` means no listener.
    pub listen: Option<SocketAddr>,
    /// Always `Some` when `listen` is; separate from the upstream secret so
    /// instances never learn the credential for the real server.
    pub secret: Option<Secret>,
    pub max_connections: usize,
    /// Caps connections that have not finished the handshake, so a port scan
    /// or slowloris cannot crowd out real instances.
    pub max_unauthenticated: usize,
    pub queue: usize,
    /// The same queue's bound in bytes: a queue is full when either bound
    /// is reached (a stanza larger than this still goes, alone).
    pub queue_bytes: usize,
    /// How long an instance whose queue is full may accept no bytes at
    /// all before it is cut. While its queue is full the core waits for
    /// room (backpressure, as a relay), so a burst never cuts an instance
    /// that reads; this bounds how long one that stopped reading holds
    /// everyone else up.
    pub stall_timeout: Duration,
    /// `Some` when the listener speaks direct TLS: read at every load, so
    /// a reload takes renewed files for the connections accepted after it.
    pub tls: Option<ServerTls>,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        Self {
            listen: None,
            secret: None,
            max_connections: defaults::MAX_CONNECTIONS,
            max_unauthenticated: defaults::MAX_UNAUTHENTICATED,
            queue: defaults::INSTANCE_QUEUE,
            queue_bytes: defaults::INSTANCE_QUEUE_BYTES,
            stall_timeout: defaults::STALL_TIMEOUT,
            tls: None,
        }
    }
}

impl RawInstances {
    fn secret_sources(&mut self) -> RawSecretSources {
        RawSecretSources {
            secret: self.secret.take(),
            secret_file: self.secret_file.take(),
            secret_env: self.secret_env.take(),
        }
    }

    pub(super) fn apply_cli(&mut self, a: &InstancesArgs) {
        if let Some(addr) = a.listen {
            self.listen = Some(addr.to_string());
        }
        if a.secret_file.is_some() || a.secret_env.is_some() {
            self.secret = None;
            self.secret_file = a.secret_file.clone();
            self.secret_env = a.secret_env.clone();
        }
        over(&mut self.max_connections, &a.max_connections);
        over(&mut self.max_unauthenticated, &a.max_unauthenticated);
        over(&mut self.queue, &a.queue);
        over(&mut self.queue_bytes, &a.queue_bytes);
        over(&mut self.stall_timeout, &a.stall_timeout);
        over(&mut self.tls_cert, &a.tls_cert);
        over(&mut self.tls_key, &a.tls_key);
    }

    pub(super) fn resolve(mut self, env: Env<'_>) -> Result<InstancesConfig, ConfigError> {
        let sources = self.secret_sources();
        let listen = self
            .listen
            .as_deref()
            .map(|s| {
                s.trim().parse::<SocketAddr>().map_err(|_| {
                    ConfigError::invalid(
                        "instances.listen",
                        format!("{s:?} is not an IP:PORT socket address (e.g. 127.0.0.1:5348)"),
                    )
                })
            })
            .transpose()?;
        // Without a listener the instance secret is not read at all, so turning
        // the listener off by commenting out `listen` cannot fail on a secret
        // file that is not there.
        let instance_secret = match listen {
            None => None,
            Some(_) => Some(
                resolve_secret("instances", sources, INSTANCE_SECRET_VAR, env)?.ok_or_else(
                    || {
                        ConfigError::invalid(
                            "instances.secret",
                            format!(
                                "none given but instances.listen is set \
                                 (set secret_file, secret_env, or {INSTANCE_SECRET_VAR})"
                            ),
                        )
                    },
                )?,
            ),
        };
        // Like the secret, read only for a listener.
        let tls = match listen {
            None => None,
            Some(_) => tls::server(self.tls_cert, self.tls_key)?,
        };
        Ok(InstancesConfig {
            tls,
            listen,
            secret: instance_secret,
            max_connections: nonzero(
                "instances.max_connections",
                self.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
            )?,
            max_unauthenticated: nonzero(
                "instances.max_unauthenticated",
                self.max_unauthenticated
                    .unwrap_or(defaults::MAX_UNAUTHENTICATED),
            )?,
            queue: nonzero(
                "instances.queue",
                self.queue.unwrap_or(defaults::INSTANCE_QUEUE),
            )?,
            queue_bytes: nonzero(
                "instances.queue_bytes",
                self.queue_bytes.unwrap_or(defaults::INSTANCE_QUEUE_BYTES),
            )?,
            stall_timeout: positive(
                "instances.stall_timeout",
                self.stall_timeout.unwrap_or(defaults::STALL_TIMEOUT),
            )?,
        })
    }
}

impl InstancesConfig {
    /// This section's part of [`super::Config::summary`].
    pub(super) fn write_summary(&self, s: &mut String) {
        let (i, d) = (self, fmt_duration);
        match (&i.listen, &i.secret) {
            (Some(addr), Some(secret)) => {
                let _ = write!(
                    s,
                    " instances.listen={addr} instances.secret={secret} instances.secret_source={}",
                    secret.source()
                );
            }
            _ => s.push_str(" instances.listen=none"),
        }
        let _ = write!(
            s,
            " instances.max_connections={} instances.max_unauthenticated={} instances.queue={} \
             instances.queue_bytes={} instances.stall_timeout={}",
            i.max_connections,
            i.max_unauthenticated,
            i.queue,
            i.queue_bytes,
            d(i.stall_timeout),
        );
        if let Some(t) = &i.tls {
            let _ = write!(
                s,
                " instances.tls_cert={} instances.tls_key={}",
                t.cert.display(),
                t.key.display()
            );
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
            listen: _,
            secret: _,
            max_connections: _,
            max_unauthenticated: _,
            queue: _,
            queue_bytes: _,
            stall_timeout: _,
            tls: _,
        } = self;
        let mut check = |changed: bool, key: &'static str, class: ReloadClass| {
            if changed {
                out(key, class);
            }
        };
        use ReloadClass::*;
        check(self.listen != new.listen, "instances.listen", Restart);
        check(
            self.secret.as_ref().map(|s| s.expose()) != new.secret.as_ref().map(|s| s.expose()),
            "instances.secret",
            NextConnection,
        );
        check(
            self.max_connections != new.max_connections,
            "instances.max_connections",
            Restart,
        );
        check(
            self.max_unauthenticated != new.max_unauthenticated,
            "instances.max_unauthenticated",
            Restart,
        );
        check(self.queue != new.queue, "instances.queue", NextConnection);
        // Renewed files (same paths, new contents) count as changed.
        let tls_changed = match (&self.tls, &new.tls) {
            (None, None) => false,
            (Some(a), Some(b)) => !a.same_as(b),
            _ => true,
        };
        check(tls_changed, "instances.tls_cert", NextConnection);
        check(
            self.queue_bytes != new.queue_bytes,
            "instances.queue_bytes",
            NextConnection,
        );
        // Each connection's link to the core carries the value it was
        // accepted with, as its queue carries its bound.
        check(
            self.stall_timeout != new.stall_timeout,
            "instances.stall_timeout",
            NextConnection,
        );
    }
}
