//! Live reload: which settings can change in a running proxy, and how.
//!
//! Pure: [`plan`] compares the running configuration with a new one and
//! sorts every changed key into one of four classes. [`crate::app::Proxy::reload`]
//! carries the plan out; `main` calls it on SIGHUP.
//!
//! | class | keys | effect |
//! |---|---|---|
//! | live | `routing.balancing`, `routing.iq_timeout`, `client_proxy.target_address`, `client_requests`, `subscribe`, `limits.upstream_buffer`, `limits.upstream_max_write_bytes`, `log.level`, `service.shutdown_grace` | at once, nothing dropped |
//! | next connection | upstream timeouts, backoff and keepalive, `instances.secret`, `instances.queue`, `instances.stall_timeout`, `limits.*` but `upstream_buffer` and `upstream_max_write_bytes` (`limits.tokenizer` included) | connections made after the reload; established ones keep theirs |
//! | reconnect | `upstream.server`, `upstream.secret` | the upstream session is closed and made again at once (pending requests on client resources are answered `recipient-unavailable`, as on any upstream loss) |
//! | restart | `upstream.domain`, `client_proxy.jat`, `routing.pending_capacity`, `instances.listen`, `instances.max_connections`, `instances.max_unauthenticated`, `log.format`, `service.worker_threads`, `metrics.listen` | the whole reload is refused; the running configuration stays |
//!
//! A reload is applied whole or not at all, so the running settings are
//! always one configuration that passed validation.

use crate::config::{
    ClientProxyConfig, Config, InstancesConfig, LimitsConfig, LogConfig, MetricsConfig,
    RoutingConfig, ServiceConfig, UpstreamConfig,
};

/// What a reload changes, by class; each list holds dotted keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Applied at once.
    pub live: Vec<&'static str>,
    /// Applied to connections made from now on.
    pub next_connection: Vec<&'static str>,
    /// Applied by making a new upstream session now.
    pub reconnect: Vec<&'static str>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.next_connection.is_empty() && self.reconnect.is_empty()
    }

    /// Every changed key, for one log line.
    pub fn changed(&self) -> Vec<&'static str> {
        let mut all = self.live.clone();
        all.extend(&self.next_connection);
        all.extend(&self.reconnect);
        all
    }
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("{} cannot change without a restart", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    #[error("the proxy is shutting down")]
    Stopped,
}

/// Sorts what differs between `old` and `new`.
pub fn plan(old: &Config, new: &Config) -> Result<Plan, ReloadError> {
    every_key_is_sorted(new);
    let mut p = Plan::default();
    let mut restart = Vec::new();
    let (ou, nu) = (&old.upstream, &new.upstream);
    let (oc, nc) = (&old.client_proxy, &new.client_proxy);
    let (or, nr) = (&old.routing, &new.routing);
    let (oi, ni) = (&old.instances, &new.instances);
    let (ol, nl) = (&old.limits, &new.limits);

    let mut check = |changed: bool, key: &'static str, class: Class| {
        if changed {
            match class {
                Class::Live => p.live.push(key),
                Class::NextConnection => p.next_connection.push(key),
                Class::Reconnect => p.reconnect.push(key),
                Class::Restart => restart.push(key),
            }
        }
    };
    use Class::*;
    check(ou.server != nu.server, "upstream.server", Reconnect);
    check(ou.domain != nu.domain, "upstream.domain", Restart);
    check(
        ou.secret.expose() != nu.secret.expose(),
        "upstream.secret",
        Reconnect,
    );
    check(
        ou.connect_timeout != nu.connect_timeout,
        "upstream.connect_timeout",
        NextConnection,
    );
    check(
        ou.handshake_timeout != nu.handshake_timeout,
        "upstream.handshake_timeout",
        NextConnection,
    );
    check(
        ou.reconnect_min != nu.reconnect_min,
        "upstream.reconnect_min",
        NextConnection,
    );
    check(
        ou.reconnect_max != nu.reconnect_max,
        "upstream.reconnect_max",
        NextConnection,
    );
    check(
        ou.keepalive_interval != nu.keepalive_interval,
        "upstream.keepalive_interval",
        NextConnection,
    );
    check(
        ou.ping_interval != nu.ping_interval,
        "upstream.ping_interval",
        NextConnection,
    );
    check(
        ou.ping_timeout != nu.ping_timeout,
        "upstream.ping_timeout",
        NextConnection,
    );

    check(
        oc.target_address != nc.target_address,
        "client_proxy.target_address",
        Live,
    );
    check(oc.jat != nc.jat, "client_proxy.jat", Restart);
    check(
        oc.client_requests != nc.client_requests,
        "client_proxy.client_requests",
        Live,
    );
    check(oc.subscribe != nc.subscribe, "client_proxy.subscribe", Live);

    check(or.balancing != nr.balancing, "routing.balancing", Live);
    check(or.iq_timeout != nr.iq_timeout, "routing.iq_timeout", Live);
    check(
        or.pending_capacity != nr.pending_capacity,
        "routing.pending_capacity",
        Restart,
    );

    check(oi.listen != ni.listen, "instances.listen", Restart);
    check(
        oi.secret.as_ref().map(|s| s.expose()) != ni.secret.as_ref().map(|s| s.expose()),
        "instances.secret",
        NextConnection,
    );
    check(
        oi.max_connections != ni.max_connections,
        "instances.max_connections",
        Restart,
    );
    check(
        oi.max_unauthenticated != ni.max_unauthenticated,
        "instances.max_unauthenticated",
        Restart,
    );
    check(oi.queue != ni.queue, "instances.queue", NextConnection);
    // Each connection's link to the core carries the value it was
    // accepted with, as its queue carries its bound.
    check(
        oi.stall_timeout != ni.stall_timeout,
        "instances.stall_timeout",
        NextConnection,
    );

    check(
        ol.max_stanza_bytes != nl.max_stanza_bytes,
        "limits.max_stanza_bytes",
        NextConnection,
    );
    check(
        ol.max_depth != nl.max_depth,
        "limits.max_depth",
        NextConnection,
    );
    check(
        ol.max_token_bytes != nl.max_token_bytes,
        "limits.max_token_bytes",
        NextConnection,
    );
    check(
        ol.upstream_max_stanza_bytes != nl.upstream_max_stanza_bytes,
        "limits.upstream_max_stanza_bytes",
        NextConnection,
    );
    check(
        ol.upstream_max_depth != nl.upstream_max_depth,
        "limits.upstream_max_depth",
        NextConnection,
    );
    check(
        ol.upstream_max_token_bytes != nl.upstream_max_token_bytes,
        "limits.upstream_max_token_bytes",
        NextConnection,
    );
    check(
        ol.upstream_max_write_bytes != nl.upstream_max_write_bytes,
        "limits.upstream_max_write_bytes",
        Live,
    );
    check(
        ol.header_timeout != nl.header_timeout,
        "limits.header_timeout",
        NextConnection,
    );
    check(
        ol.idle_timeout != nl.idle_timeout,
        "limits.idle_timeout",
        NextConnection,
    );
    check(
        ol.write_queue != nl.write_queue,
        "limits.write_queue",
        NextConnection,
    );
    check(
        ol.upstream_buffer != nl.upstream_buffer,
        "limits.upstream_buffer",
        Live,
    );
    // Read when each connection's framer is made (listener, upstream).
    check(
        ol.tokenizer != nl.tokenizer,
        "limits.tokenizer",
        NextConnection,
    );

    check(old.log.level != new.log.level, "log.level", Live);
    check(old.log.format != new.log.format, "log.format", Restart);
    check(
        old.service.shutdown_grace != new.service.shutdown_grace,
        "service.shutdown_grace",
        Live,
    );
    // The runtime is built once, before the proxy starts: accepting a
    // new count would report a change that never happens.
    check(
        old.service.worker_threads != new.service.worker_threads,
        "service.worker_threads",
        Restart,
    );
    check(
        old.metrics.listen != new.metrics.listen,
        "metrics.listen",
        Restart,
    );

    if restart.is_empty() {
        Ok(p)
    } else {
        Err(ReloadError::NeedsRestart(restart))
    }
}

/// Names every field of every section, without `..`: a setting added to
/// [`Config`] and not sorted by [`plan`] fails to compile here, rather
/// than reloading silently as "nothing changed" (as `limits.tokenizer`
/// and `service.worker_threads` once did). Add the new field here and a
/// `check` for it in [`plan`].
fn every_key_is_sorted(c: &Config) {
    let Config {
        upstream,
        client_proxy,
        routing,
        instances,
        limits,
        log,
        service,
        metrics,
    } = c;
    let UpstreamConfig {
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
    } = upstream;
    let ClientProxyConfig {
        target_address: _,
        jat: _,
        client_requests: _,
        subscribe: _,
    } = client_proxy;
    let RoutingConfig {
        balancing: _,
        iq_timeout: _,
        pending_capacity: _,
    } = routing;
    let InstancesConfig {
        listen: _,
        secret: _,
        max_connections: _,
        max_unauthenticated: _,
        queue: _,
        stall_timeout: _,
    } = instances;
    let LimitsConfig {
        max_stanza_bytes: _,
        max_depth: _,
        max_token_bytes: _,
        upstream_max_stanza_bytes: _,
        upstream_max_depth: _,
        upstream_max_token_bytes: _,
        upstream_max_write_bytes: _,
        header_timeout: _,
        idle_timeout: _,
        write_queue: _,
        upstream_buffer: _,
        tokenizer: _,
    } = limits;
    let LogConfig {
        level: _,
        format: _,
    } = log;
    let ServiceConfig {
        shutdown_grace: _,
        worker_threads: _,
    } = service;
    let MetricsConfig { listen: _ } = metrics;
}

/// True when a running upstream session no longer matches `new`.
pub fn upstream_needs_reconnect(session: &Config, new: &Config) -> bool {
    session.upstream.server != new.upstream.server
        || session.upstream.secret.expose() != new.upstream.secret.expose()
        || session.upstream.domain != new.upstream.domain
}

enum Class {
    Live,
    NextConnection,
    Reconnect,
    Restart,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const BASE: &str = r#"
        [upstream]
        server = "127.0.0.1:5347"
        domain = "proxy.example.test"
        secret = "one"
        [client_proxy]
        target_address = "impl@example.test"
        [instances]
        listen = "127.0.0.1:5348"
        secret = "inst"
    "#;

    fn cfg(extra: &str) -> Config {
        config::from_toml_str(&format!("{BASE}\n{extra}"))
            .unwrap_or_else(|e| panic!("test config: {e}"))
    }

    fn edit(from: &str, to: &str) -> Config {
        assert!(BASE.contains(from), "{from}");
        config::from_toml_str(&BASE.replace(from, to)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn nothing_changed() {
        let p = plan(&cfg(""), &cfg("")).expect("same config reloads");
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn live_settings() {
        let new = cfg("[routing]\nbalancing = \"sticky\"\niq_timeout = \"5s\"\n\
             [limits]\nupstream_buffer = 7\n[log]\nlevel = \"debug\"\n\
             [service]\nshutdown_grace = \"1s\"");
        let p = plan(&cfg(""), &new).expect("live changes reload");
        assert_eq!(
            p.live,
            [
                "routing.balancing",
                "routing.iq_timeout",
                "limits.upstream_buffer",
                "log.level",
                "service.shutdown_grace"
            ]
        );
        assert!(p.next_connection.is_empty() && p.reconnect.is_empty());
        let p = plan(&cfg(""), &edit("impl@", "other@")).expect("target reloads");
        assert_eq!(p.live, ["client_proxy.target_address"]);
    }

    #[test]
    fn next_connection_settings() {
        let new = edit("secret = \"inst\"", "secret = \"inst2\"");
        let p = plan(&cfg(""), &new).expect("instance secret reloads");
        assert_eq!(p.next_connection, ["instances.secret"]);
        let new = edit(
            "secret = \"inst\"",
            "secret = \"inst\"\nstall_timeout = \"9s\"",
        );
        let p = plan(&cfg(""), &new).expect("the stall timeout reloads");
        assert_eq!(p.next_connection, ["instances.stall_timeout"]);
        let p = plan(&cfg(""), &cfg("[limits]\nmax_stanza_bytes = 8192")).expect("limits");
        assert_eq!(p.next_connection, ["limits.max_stanza_bytes"]);
    }

    #[test]
    fn tokenizer_is_reported_for_new_connections() {
        let p =
            plan(&cfg(""), &cfg("[limits]\ntokenizer = \"rxml\"")).expect("the tokenizer reloads");
        assert_eq!(p.next_connection, ["limits.tokenizer"]);
        assert!(p.live.is_empty() && p.reconnect.is_empty());
        assert_eq!(p.changed(), ["limits.tokenizer"]);
    }

    #[test]
    fn worker_threads_need_a_restart() {
        for (old, new) in [("", "2"), ("1", "2"), ("2", "")] {
            let section = |n: &str| {
                if n.is_empty() {
                    String::new()
                } else {
                    format!("[service]\nworker_threads = {n}")
                }
            };
            assert_eq!(
                plan(&cfg(&section(old)), &cfg(&section(new))),
                Err(ReloadError::NeedsRestart(vec!["service.worker_threads"])),
                "{old:?} -> {new:?}"
            );
        }
        assert!(plan(
            &cfg("[service]\nworker_threads = 2"),
            &cfg("[service]\nworker_threads = 2")
        )
        .is_ok_and(|p| p.is_empty()));
    }

    #[test]
    fn reconnect_settings() {
        let new = edit("secret = \"one\"", "secret = \"two\"");
        let p = plan(&cfg(""), &new).expect("upstream secret reloads");
        assert_eq!(p.reconnect, ["upstream.secret"]);
        assert!(upstream_needs_reconnect(&cfg(""), &new));
        let new = edit("127.0.0.1:5347", "127.0.0.1:5349");
        assert_eq!(
            plan(&cfg(""), &new).map(|p| p.reconnect),
            Ok(vec!["upstream.server"])
        );
        assert!(!upstream_needs_reconnect(
            &cfg(""),
            &cfg("[routing]\nbalancing = \"sticky\"")
        ));
    }

    #[test]
    fn restart_settings_refuse_the_whole_reload() {
        let new = edit("proxy.example.test", "other.example.test");
        assert_eq!(
            plan(&cfg(""), &new),
            Err(ReloadError::NeedsRestart(vec!["upstream.domain"]))
        );
        // jat and metrics.listen set by hand: BASE has [client_proxy] already.
        let mut new = cfg("[routing]\nbalancing = \"sticky\"\npending_capacity = 9");
        new.client_proxy.jat = config::JatMode::Opaque;
        new.metrics.listen = "127.0.0.1:9".parse().ok();
        let e = plan(&cfg(""), &new).expect_err("restart keys refuse");
        assert_eq!(
            e,
            ReloadError::NeedsRestart(vec![
                "client_proxy.jat",
                "routing.pending_capacity",
                "metrics.listen"
            ])
        );
        assert_eq!(
            e.to_string(),
            "client_proxy.jat, routing.pending_capacity, metrics.listen cannot change without a restart"
        );
    }
}
