//! Live reload: which settings can change in a running proxy, and how.
//!
//! Pure: [`plan`] compares the running configuration with a new one and
//! sorts every changed key into one of four classes. [`crate::app::Proxy::reload`]
//! carries the plan out; `main` calls it on SIGHUP.
//!
//! | class | keys | effect |
//! |---|---|---|
//! | live | `routing.balancing`, `routing.iq_timeout`, `routing.hold_when_empty`, `redispatch`, `retry_on`, `retry_limit`, `quarantine_after`, `quarantine_for`, `client_proxy.target_address`, `client_requests`, `subscribe`, `qualify_timeout`, `limits.upstream_buffer`, `limits.upstream_buffer_bytes`, `limits.upstream_max_write_bytes`, `log.level`, `service.shutdown_grace` | at once, nothing dropped |
//! | next connection | upstream timeouts, backoff and keepalive, `instances.secret`, `instances.queue`, `instances.queue_bytes`, `instances.stall_timeout`, `instances.tls_cert` (renewed files too), `limits.*` but `upstream_buffer`, `upstream_buffer_bytes` and `upstream_max_write_bytes` (`limits.tokenizer` included) | connections made after the reload; established ones keep theirs |
//! | reconnect | `upstream.server`, `upstream.secret`, `upstream.tls` (any TLS key, or a renewed file), `client_proxy.resources`, `client_proxy.require_feature` (every resource is qualified again under the new rule) | the upstream session is closed and made again at once (pending requests on client resources are answered `recipient-unavailable`, as on any upstream loss) |
//! | restart | `upstream.domain`, `client_proxy.jat`, `routing.pending_capacity`, `instances.listen`, `instances.max_connections`, `instances.max_unauthenticated`, `log.format`, `service.worker_threads`, `metrics.listen` | the whole reload is refused; the running configuration stays |
//!
//! A reload is applied whole or not at all, so the running settings are
//! always one configuration that passed validation.

use crate::config::{Config, ReloadClass};

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

/// Sorts what differs between `old` and `new`. Each section classifies
/// its own keys, next to their definition (`config/<section>.rs`).
pub fn plan(old: &Config, new: &Config) -> Result<Plan, ReloadError> {
    let mut p = Plan::default();
    let mut restart = Vec::new();
    let mut sort = |key: &'static str, class: ReloadClass| match class {
        ReloadClass::Live => p.live.push(key),
        ReloadClass::NextConnection => p.next_connection.push(key),
        ReloadClass::Reconnect => p.reconnect.push(key),
        ReloadClass::Restart => restart.push(key),
    };
    old.upstream.reload_classes(&new.upstream, &mut sort);
    old.client_proxy
        .reload_classes(&new.client_proxy, &mut sort);
    old.routing.reload_classes(&new.routing, &mut sort);
    old.instances.reload_classes(&new.instances, &mut sort);
    old.limits.reload_classes(&new.limits, &mut sort);
    old.log.reload_classes(&new.log, &mut sort);
    old.service.reload_classes(&new.service, &mut sort);
    old.metrics.reload_classes(&new.metrics, &mut sort);

    if restart.is_empty() {
        Ok(p)
    } else {
        Err(ReloadError::NeedsRestart(restart))
    }
}

/// True when a running upstream session no longer matches `new`.
pub fn upstream_needs_reconnect(session: &Config, new: &Config) -> bool {
    session.upstream.server != new.upstream.server
        || session.upstream.secret.expose() != new.upstream.secret.expose()
        || session.upstream.domain != new.upstream.domain
        || session.upstream.tls_changed(&new.upstream)
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
