//! The configuration as a whole: flags over file over defaults, error
//! wording, secrets, the summary line and the shipped example.

use super::*;
use crate::stanza::StanzaCondition;
use std::collections::HashMap;
use std::io::Write as _;

const SECRET: &str = "s3cr3t-Zq9-do-not-log";

/// Smallest valid config: everything else must come from defaults.
const MINIMAL: &str = r#"
    [upstream]
    server = "127.0.0.1:5347"
    domain = "proxy.example.test"
    secret = "s3cr3t-Zq9-do-not-log"

    [client_proxy]
    target_address = "impl@example.test"
"#;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let map: HashMap<String, OsString> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
        .collect();
    move |k| map.get(k).cloned()
}

fn no_env(_: &str) -> Option<OsString> {
    None
}

fn parse(s: &str) -> Result<Config, ConfigError> {
    from_toml_str_with_env(s, &no_env)
}

fn parse_ok(s: &str) -> Config {
    match parse(s) {
        Ok(c) => c,
        Err(e) => panic!("expected valid config, got: {e}"),
    }
}

fn parse_err(s: &str) -> ConfigError {
    match parse(s) {
        Ok(c) => panic!("expected an error, got: {}", c.summary()),
        Err(e) => e,
    }
}

/// MINIMAL with `extra` appended to the given section (sections may
/// repeat keys only once, so callers add keys not already present).
fn with(section: &str, extra: &str) -> String {
    if section == "upstream" || section == "client_proxy" {
        MINIMAL.replace(&format!("[{section}]"), &format!("[{section}]\n{extra}"))
    } else {
        format!("{MINIMAL}\n[{section}]\n{extra}\n")
    }
}

fn cli(args: &[&str]) -> Cli {
    let mut argv = vec!["jatproxy"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => panic!("cli parse failed: {e}"),
    }
}

fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("create temp file");
    f.write_all(contents.as_bytes()).expect("write temp file");
    path
}

#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn defaults() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.upstream.server, "127.0.0.1:5347");
    assert_eq!(c.upstream.domain, "proxy.example.test");
    assert_eq!(c.upstream.secret.expose(), SECRET);
    assert_eq!(c.upstream.secret.source(), &SecretSource::Inline);
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.upstream.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.upstream.reconnect_min, Duration::from_millis(500));
    assert_eq!(c.upstream.reconnect_max, Duration::from_secs(30));
    assert_eq!(c.upstream.keepalive_interval, Duration::from_secs(60));

    assert_eq!(
        c.client_proxy
            .target_address
            .as_ref()
            .map(|j| j.to_string()),
        Some("impl@example.test".to_owned())
    );
    assert_eq!(c.client_proxy.jat, JatMode::Inline);
    assert!(c.client_proxy.client_requests);
    assert!(c.client_proxy.subscribe);
    assert_eq!(c.client_proxy.admission.resources, None);
    assert_eq!(c.client_proxy.admission.require_feature, None);
    assert_eq!(
        c.client_proxy.admission.qualify_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(
        c.client_proxy.admission,
        crate::qualify::Admission::default()
    );

    assert_eq!(c.routing, RoutingConfig::default());
    assert_eq!(c.routing.balancing, Balancing::Random);
    assert_eq!(c.routing.iq_timeout, Duration::from_secs(30));
    assert_eq!(c.routing.pending_capacity, 65536);
    assert_eq!(
        c.routing.continuity.hold_when_empty,
        Duration::from_secs(10)
    );
    assert_eq!(c.routing.continuity.redispatch, Redispatch::Get);
    assert!(c.routing.continuity.retry_on.is_empty());
    assert_eq!(c.routing.continuity.retry_limit, 2);
    assert_eq!(c.routing.continuity.quarantine_after, 3);
    assert_eq!(c.routing.continuity.quarantine_for, Duration::from_secs(60));

    assert_eq!(c.instances.listen, None);
    assert!(c.instances.secret.is_none());
    assert_eq!(c.instances.max_connections, 64);
    assert_eq!(c.instances.max_unauthenticated, 16);
    assert_eq!(c.instances.queue, 1024);
    assert_eq!(c.instances.queue_bytes, 4 << 20);
    assert_eq!(c.limits.upstream_buffer_bytes, 8 << 20);
    assert_eq!(c.instances.stall_timeout, Duration::from_secs(5));

    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(c.limits.max_stanza_bytes, 524_288);
    assert_eq!(c.limits.max_depth, 64);
    assert_eq!(c.limits.max_token_bytes, 32_768);
    // Upstream: every stanza a default Prosody or ejabberd accepts
    // from a client (256 KiB, up to 6x after re-serialisation).
    assert_eq!(c.limits.upstream_max_stanza_bytes, 2 * 1024 * 1024);
    assert_eq!(c.limits.upstream_max_depth, 65_536);
    assert_eq!(c.limits.upstream_max_token_bytes, 2 * 1024 * 1024);
    assert!(c.limits.upstream_framer().per_stanza);
    assert!(!c.limits.instance_framer().per_stanza);
    assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.limits.write_queue, 4096);
    assert_eq!(c.limits.upstream_buffer, 4096);

    assert_eq!(c.log, LogConfig::default());
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.service.shutdown_grace, Duration::from_secs(5));
    assert_eq!(c.metrics, MetricsConfig::default());
    assert_eq!(c.metrics.listen, None);
}

/// Every key set in the file to a non-default value is honoured.
#[test]
fn file_values_override_defaults() {
    let c = parse_ok(
        r#"
        [upstream]
        server = "xmpp.example.test:5275"
        domain = "Proxy.Example.Test."
        secret = "s3cr3t-Zq9-do-not-log"
        connect_timeout = "3s"
        handshake_timeout = "4s"
        reconnect_min = "1s"
        reconnect_max = "2m"
        keepalive_interval = "45s"

        [client_proxy]
        target_address = "Impl@Example.Test"
        jat = "opaque"
        client_requests = false
        subscribe = false
        resources = "focus*"
        require_feature = "urn:example:conference"
        qualify_timeout = "2s"

        [routing]
        balancing = "least-pending"
        iq_timeout = "1m 30s"
        pending_capacity = 10
        hold_when_empty = "0s"
        redispatch = "all"
        retry_on = ["feature-not-implemented", "service-unavailable", "feature-not-implemented"]
        retry_limit = 5
        quarantine_after = 0
        quarantine_for = "5m"

        [instances]
        listen = "[::1]:5348"
        secret = "instance-secret"
        max_connections = 5
        max_unauthenticated = 2
        queue = 7
        stall_timeout = "750ms"

        [limits]
        max_stanza_bytes = 65536
        max_depth = 20
        header_timeout = "2s"
        idle_timeout = "1h"
        write_queue = 100
        upstream_buffer = 200

        [log]
        level = "jatproxy=debug,info"
        format = "json"

        [service]
        shutdown_grace = "0s"
        "#,
    );
    assert_eq!(c.upstream.server, "xmpp.example.test:5275");
    assert_eq!(c.upstream.domain, "proxy.example.test");
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.upstream.handshake_timeout, Duration::from_secs(4));
    assert_eq!(c.upstream.reconnect_min, Duration::from_secs(1));
    assert_eq!(c.upstream.reconnect_max, Duration::from_secs(120));
    assert_eq!(c.upstream.keepalive_interval, Duration::from_secs(45));
    assert_eq!(
        c.client_proxy.target_address.map(|j| j.to_string()),
        Some("impl@example.test".to_owned())
    );
    assert_eq!(c.client_proxy.jat, JatMode::Opaque);
    assert!(!c.client_proxy.client_requests);
    assert!(!c.client_proxy.subscribe);
    assert_eq!(
        c.client_proxy
            .admission
            .resources
            .as_ref()
            .map(|f| f.as_str()),
        Some("focus*")
    );
    assert_eq!(
        c.client_proxy.admission.require_feature.as_deref(),
        Some("urn:example:conference")
    );
    assert_eq!(
        c.client_proxy.admission.qualify_timeout,
        Duration::from_secs(2)
    );
    assert_eq!(c.routing.balancing, Balancing::LeastPending);
    assert_eq!(c.routing.iq_timeout, Duration::from_secs(90));
    assert_eq!(c.routing.pending_capacity, 10);
    assert_eq!(c.routing.continuity.hold_when_empty, Duration::ZERO);
    assert_eq!(c.routing.continuity.redispatch, Redispatch::All);
    // Repeats are kept once, in the order written.
    assert_eq!(
        c.routing.continuity.retry_on,
        [
            StanzaCondition::FeatureNotImplemented,
            StanzaCondition::ServiceUnavailable
        ]
    );
    assert_eq!(c.routing.continuity.retry_limit, 5);
    assert_eq!(c.routing.continuity.quarantine_after, 0);
    assert_eq!(
        c.routing.continuity.quarantine_for,
        Duration::from_secs(300)
    );
    assert_eq!(c.instances.listen, "[::1]:5348".parse().ok());
    assert_eq!(
        c.instances.secret.as_ref().map(Secret::expose),
        Some("instance-secret")
    );
    assert_eq!(c.instances.max_connections, 5);
    assert_eq!(c.instances.max_unauthenticated, 2);
    assert_eq!(c.instances.queue, 7);
    assert_eq!(c.instances.stall_timeout, Duration::from_millis(750));
    assert_eq!(c.limits.max_stanza_bytes, 65536);
    assert_eq!(c.limits.max_depth, 20);
    assert_eq!(c.limits.header_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(3600));
    assert_eq!(c.limits.write_queue, 100);
    assert_eq!(c.limits.upstream_buffer, 200);
    assert_eq!(c.log.level, "jatproxy=debug,info");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.service.shutdown_grace, Duration::ZERO);
}

#[test]
fn balancing_spellings() {
    for (s, b) in [
        ("random", Balancing::Random),
        ("round-robin", Balancing::RoundRobin),
        ("least-pending", Balancing::LeastPending),
        ("sticky", Balancing::Sticky),
    ] {
        let c = parse_ok(&with("routing", &format!("balancing = {s:?}")));
        assert_eq!(c.routing.balancing, b);
        assert_eq!(b.as_str(), s);
        assert_eq!(cli(&["--balancing", s]).routing.balancing, Some(b));
    }
    let e = parse_err(&with("routing", "balancing = \"round_robin\""));
    assert_eq!(e.key(), Some("routing.balancing"));
    assert!(e.to_string().contains("routing.balancing"), "{e}");
}

/// Every flag wins over the file, which itself sets a different value.
#[test]
fn every_flag_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(
        dir.path(),
        "config.toml",
        r#"
        [upstream]
        server = "file.example.test:1"
        domain = "file.example.test"
        secret_env = "FILE_SECRET"
        connect_timeout = "1s"
        handshake_timeout = "1s"
        reconnect_min = "1s"
        reconnect_max = "1s"
        keepalive_interval = "1s"
        [client_proxy]
        target_address = "file@example.test"
        jat = "inline"
        client_requests = true
        subscribe = true
        resources = "file*"
        require_feature = "urn:file"
        qualify_timeout = "1s"
        [routing]
        balancing = "random"
        iq_timeout = "1s"
        pending_capacity = 1
        hold_when_empty = "1s"
        redispatch = "none"
        retry_on = ["conflict"]
        retry_limit = 1
        quarantine_after = 1
        quarantine_for = "1s"
        [instances]
        listen = "127.0.0.1:1"
        secret_env = "FILE_INSTANCE_SECRET"
        max_connections = 1
        max_unauthenticated = 1
        queue = 1
        stall_timeout = "1s"
        [limits]
        max_stanza_bytes = 4096
        max_depth = 1
        header_timeout = "1s"
        idle_timeout = "1s"
        write_queue = 1
        upstream_buffer = 1
        [log]
        level = "warn"
        format = "text"
        [service]
        shutdown_grace = "1s"
        [metrics]
        listen = "127.0.0.1:2"
        "#,
    );
    let secret_file = write_file(dir.path(), "up.secret", "from-file\n");
    let args = cli(&[
        "--config",
        &file.display().to_string(),
        "--upstream-server",
        "cli.example.test:5347",
        "--domain",
        "cli.example.test",
        "--upstream-secret-file",
        &secret_file.display().to_string(),
        "--upstream-connect-timeout",
        "2s",
        "--upstream-handshake-timeout",
        "3s",
        "--upstream-reconnect-min",
        "4s",
        "--upstream-reconnect-max",
        "5s",
        "--upstream-keepalive-interval",
        "6s",
        "--target-address",
        "cli@example.test",
        "--jat",
        "opaque",
        "--client-requests",
        "false",
        "--subscribe",
        "no",
        "--resources",
        "re:cli-[0-9]+",
        "--require-feature",
        "urn:cli",
        "--qualify-timeout",
        "20s",
        "--balancing",
        "sticky",
        "--iq-timeout",
        "7s",
        "--pending-capacity",
        "8",
        "--hold-when-empty",
        "21s",
        "--redispatch",
        "all",
        "--retry-on",
        "feature-not-implemented,service-unavailable",
        "--retry-limit",
        "22",
        "--quarantine-after",
        "23",
        "--quarantine-for",
        "24s",
        "--instances-listen",
        "127.0.0.1:9",
        "--instance-secret-env",
        "CLI_INSTANCE_SECRET",
        "--instances-max-connections",
        "10",
        "--instances-max-unauthenticated",
        "11",
        "--instances-queue",
        "12",
        "--instances-queue-bytes",
        "65536",
        "--upstream-buffer-bytes",
        "65537",
        "--instances-stall-timeout",
        "2s",
        "--max-stanza-bytes",
        "8192",
        "--max-depth",
        "13",
        "--max-token-bytes",
        "8193",
        "--upstream-max-stanza-bytes",
        "8194",
        "--upstream-max-depth",
        "8195",
        "--upstream-max-token-bytes",
        "8196",
        "--header-timeout",
        "14s",
        "--idle-timeout",
        "15s",
        "--write-queue",
        "16",
        "--upstream-buffer",
        "17",
        "--log-level",
        "debug",
        "--log-format",
        "json",
        "--shutdown-grace",
        "18s",
        "--metrics-listen",
        "127.0.0.1:19",
    ]);
    let env = env_of(&[
        ("FILE_SECRET", "file-env"),
        ("FILE_INSTANCE_SECRET", "file-instance"),
        ("CLI_INSTANCE_SECRET", "cli-instance"),
    ]);
    let c = load_with_env(&args, &env).unwrap_or_else(|e| panic!("{e}"));
    let s = Duration::from_secs;
    assert_eq!(c.upstream.server, "cli.example.test:5347");
    assert_eq!(c.upstream.domain, "cli.example.test");
    assert_eq!(c.upstream.secret.expose(), "from-file");
    assert_eq!(c.upstream.connect_timeout, s(2));
    assert_eq!(c.upstream.handshake_timeout, s(3));
    assert_eq!(c.upstream.reconnect_min, s(4));
    assert_eq!(c.upstream.reconnect_max, s(5));
    assert_eq!(c.upstream.keepalive_interval, s(6));
    assert_eq!(
        c.client_proxy.target_address.map(|j| j.to_string()),
        Some("cli@example.test".to_owned())
    );
    assert_eq!(c.client_proxy.jat, JatMode::Opaque);
    assert!(!c.client_proxy.client_requests);
    assert!(!c.client_proxy.subscribe);
    assert_eq!(
        c.client_proxy
            .admission
            .resources
            .as_ref()
            .map(|f| f.as_str()),
        Some("re:cli-[0-9]+")
    );
    assert_eq!(
        c.client_proxy.admission.require_feature.as_deref(),
        Some("urn:cli")
    );
    assert_eq!(c.client_proxy.admission.qualify_timeout, s(20));
    assert_eq!(c.routing.balancing, Balancing::Sticky);
    assert_eq!(c.routing.iq_timeout, s(7));
    assert_eq!(c.routing.pending_capacity, 8);
    assert_eq!(c.routing.continuity.hold_when_empty, s(21));
    assert_eq!(c.routing.continuity.redispatch, Redispatch::All);
    assert_eq!(
        c.routing.continuity.retry_on,
        [
            StanzaCondition::FeatureNotImplemented,
            StanzaCondition::ServiceUnavailable
        ]
    );
    assert_eq!(c.routing.continuity.retry_limit, 22);
    assert_eq!(c.routing.continuity.quarantine_after, 23);
    assert_eq!(c.routing.continuity.quarantine_for, s(24));
    assert_eq!(c.instances.listen, "127.0.0.1:9".parse().ok());
    assert_eq!(
        c.instances.secret.as_ref().map(Secret::expose),
        Some("cli-instance")
    );
    assert_eq!(c.instances.max_connections, 10);
    assert_eq!(c.instances.max_unauthenticated, 11);
    assert_eq!(c.instances.queue, 12);
    assert_eq!(c.instances.queue_bytes, 65536);
    assert_eq!(c.limits.upstream_buffer_bytes, 65537);
    assert_eq!(c.instances.stall_timeout, s(2));
    assert_eq!(c.limits.max_stanza_bytes, 8192);
    assert_eq!(c.limits.max_depth, 13);
    assert_eq!(c.limits.max_token_bytes, 8193);
    assert_eq!(c.limits.upstream_max_stanza_bytes, 8194);
    assert_eq!(c.limits.upstream_max_depth, 8195);
    assert_eq!(c.limits.upstream_max_token_bytes, 8196);
    assert_eq!(c.limits.header_timeout, s(14));
    assert_eq!(c.limits.idle_timeout, s(15));
    assert_eq!(c.limits.write_queue, 16);
    assert_eq!(c.limits.upstream_buffer, 17);
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.service.shutdown_grace, s(18));
    assert_eq!(c.metrics.listen, "127.0.0.1:19".parse().ok());
}

#[test]
fn worker_threads_from_file_and_flag() {
    assert_eq!(parse_ok(MINIMAL).service.worker_threads, None);
    let c = parse_ok(&with("service", "worker_threads = 3"));
    assert_eq!(c.service.worker_threads, Some(3));
    let e = parse_err(&with("service", "worker_threads = 0"));
    assert_eq!(e.key(), Some("service.worker_threads"));

    let args = cli(&[
        "--upstream-server",
        "localhost:5347",
        "--upstream-domain",
        "proxy.example.test",
        "--upstream-secret-env",
        "MY_SECRET",
        "--target-address",
        "impl@example.test",
        "--worker-threads",
        "1",
    ]);
    let env = env_of(&[("MY_SECRET", "a")]);
    let c = load_with_env(&args, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.service.worker_threads, Some(1));
}

#[test]
fn flags_alone_without_a_file() {
    let args = cli(&[
        "--upstream-server",
        "localhost:5347",
        "--upstream-domain",
        "proxy.example.test",
        "--upstream-secret-env",
        "MY_SECRET",
        "--instances-listen",
        "127.0.0.1:5348",
        "--instances-secret-env",
        "MY_INSTANCE_SECRET",
    ]);
    let env = env_of(&[("MY_SECRET", "a"), ("MY_INSTANCE_SECRET", "b")]);
    let c = load_with_env(&args, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.upstream.secret.source(),
        &SecretSource::Env("MY_SECRET".into())
    );
    assert!(c.client_proxy.target_address.is_none());
    assert_eq!(c.instances.secret.as_ref().map(Secret::expose), Some("b"));
    assert!(!args.check_config);
    assert!(cli(&["--check-config"]).check_config);
}

#[test]
fn bad_flag_values_are_rejected_by_clap_naming_the_flag() {
    for args in [
        &["--iq-timeout", "30x"][..],
        &["--pending-capacity=-1"],
        &["--balancing", "fastest"],
        &["--instances-listen", "localhost:5348"],
        &["--subscribe", "maybe"],
    ] {
        let mut argv = vec!["jatproxy"];
        argv.extend_from_slice(args);
        let e = match Cli::try_parse_from(argv) {
            Ok(_) => panic!("{args:?} should not parse"),
            Err(e) => e.to_string(),
        };
        let flag = args[0].split('=').next().unwrap_or_default();
        assert!(e.contains(flag), "{args:?}: {e}");
    }
    // Secrets themselves have no flag.
    assert!(Cli::try_parse_from(["jatproxy", "--upstream-secret", "x"]).is_err());
}

#[test]
fn missing_config_file_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.toml");
    let args = cli(&["--config", &path.display().to_string()]);
    let e = load_with_env(&args, &no_env).expect_err("must fail");
    assert!(matches!(e, ConfigError::Read { .. }));
    let msg = e.to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("cannot read config file"), "{msg}");
}

#[test]
fn file_errors_carry_file_name_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(
        dir.path(),
        "jat.toml",
        "[upstream]\nserver = \"a:1\"\n\n[routing]\niq_timeout = \"30x\"\n",
    );
    let args = cli(&["--config", &file.display().to_string()]);
    let e = load_with_env(&args, &no_env).expect_err("must fail");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}:5: ", file.display())), "{msg}");
    assert_eq!(e.key(), Some("routing.iq_timeout"));
}

#[test]
fn unknown_keys_are_rejected() {
    let e = parse_err(&with("routing", "foo = 1"));
    assert_eq!(e.key(), Some("routing.foo"));
    let msg = e.to_string();
    assert!(msg.starts_with("config.toml:"), "{msg}");
    assert!(msg.contains("unknown key \"foo\" in [routing]"), "{msg}");
    assert!(msg.contains("iq_timeout"), "lists known keys: {msg}");
    assert!(!msg.contains('\n'), "{msg}");

    let msg = parse_err(&format!("{MINIMAL}\n[rooting]\nx = 1\n")).to_string();
    assert!(msg.contains("unknown section [rooting]"), "{msg}");

    let msg = parse_err(&format!("foo = 1\n{MINIMAL}")).to_string();
    assert!(msg.contains("unknown key \"foo\" at top level"), "{msg}");
    assert!(msg.starts_with("config.toml:1:"), "{msg}");

    // A dotted key before any table header.
    let msg = parse_err(&format!("limits.max_size = 1\n{MINIMAL}")).to_string();
    assert!(
        msg.contains("unknown key \"max_size\" in [limits]"),
        "{msg}"
    );

    // A dotted key after a header belongs to that table.
    let msg = parse_err(&format!("{MINIMAL}\nlimits.max_size = 1\n")).to_string();
    assert!(
        msg.contains("unknown key \"limits\" in [client_proxy]"),
        "{msg}"
    );

    // The old spelling of shutdown_grace at top level is not silently
    // accepted either.
    let msg = parse_err(&format!("shutdown_grace = \"1s\"\n{MINIMAL}")).to_string();
    assert!(msg.contains("unknown key \"shutdown_grace\""), "{msg}");
}

#[test]
fn toml_syntax_errors_are_one_line_with_line_number() {
    let e = parse_err("[upstream]\nserver = \"a:1\"\ndomain = \n");
    let msg = e.to_string();
    assert!(msg.starts_with("config.toml:3: "), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");

    let msg = parse_err("[upstream]\nserver = 1\nserver = 2\n").to_string();
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn wrong_types_name_the_key() {
    for (section, line, key) in [
        (
            "routing",
            "pending_capacity = -1",
            "routing.pending_capacity",
        ),
        (
            "routing",
            "pending_capacity = \"10\"",
            "routing.pending_capacity",
        ),
        ("routing", "iq_timeout = 30", "routing.iq_timeout"),
        (
            "client_proxy",
            "subscribe = \"yes\"",
            "client_proxy.subscribe",
        ),
        ("client_proxy", "jat = \"clear\"", "client_proxy.jat"),
        ("log", "format = \"xml\"", "log.format"),
        ("limits", "max_depth = 1.5", "limits.max_depth"),
    ] {
        let e = parse_err(&with(section, line));
        assert_eq!(e.key(), Some(key), "{line}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(key), "{line}: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
    let e = parse_err(&format!("routing = 3\n{MINIMAL}"));
    assert_eq!(e.key(), Some("routing"));
    assert_eq!(
        e.to_string(),
        "config.toml:1: routing: invalid type: integer \"3\", expected a table"
    );
    let msg = parse_err(&with("routing", "balancing = \"fast\"")).to_string();
    assert!(
        msg.ends_with(
            "routing.balancing: unknown variant \"fast\", expected one of \
             \"random\", \"round-robin\", \"least-pending\", \"sticky\""
        ),
        "{msg}"
    );
    let msg = parse_err(&with("routing", "pending_capacity = -1")).to_string();
    assert!(msg.contains("non-negative integer"), "{msg}");
    let msg = parse_err(&with("routing", "iq_timeout = 30")).to_string();
    assert!(msg.contains("duration string"), "{msg}");
}

#[test]
fn durations() {
    for (s, d) in [
        ("30s", Duration::from_secs(30)),
        ("500ms", Duration::from_millis(500)),
        ("2m", Duration::from_secs(120)),
        ("1h 30m", Duration::from_secs(5400)),
        (" 10s ", Duration::from_secs(10)),
        ("1.5s", Duration::from_millis(1500)),
    ] {
        assert_eq!(parse_duration(s), Ok(d), "{s}");
        let c = parse_ok(&with("routing", &format!("iq_timeout = {s:?}")));
        assert_eq!(c.routing.iq_timeout, d);
    }
    for s in ["30x", "30", "", "x", "-1s", "s"] {
        assert!(parse_duration(s).is_err(), "{s:?} should be rejected");
    }
    let e = parse_err(&with("routing", "iq_timeout = \"30x\""));
    let msg = e.to_string();
    assert!(
        msg.ends_with(
            "routing.iq_timeout: invalid duration \"30x\": unknown unit \"x\"; \
             expected number followed by unit, like 500ms, 30s or 2m"
        ),
        "{msg}"
    );
    assert_eq!(
        parse_duration("30").err().as_deref(),
        Some("invalid duration \"30\": expected number followed by unit, like 500ms, 30s or 2m")
    );
}

/// Every duration: a day passes, a second more is refused naming the
/// key, and the absurd value that used to panic at the first request
/// is refused at load, from the file or a flag.
#[test]
fn durations_are_capped_at_a_day() {
    const KEYS: [(&str, &str); 15] = [
        ("client_proxy", "token_idle_timeout"),
        ("upstream", "connect_timeout"),
        ("upstream", "handshake_timeout"),
        ("upstream", "reconnect_min"),
        ("upstream", "reconnect_max"),
        ("upstream", "keepalive_interval"),
        ("upstream", "ping_interval"),
        ("upstream", "ping_timeout"),
        ("routing", "iq_timeout"),
        ("routing", "hold_when_empty"),
        ("routing", "quarantine_for"),
        ("client_proxy", "qualify_timeout"),
        ("limits", "header_timeout"),
        ("limits", "idle_timeout"),
        ("service", "shutdown_grace"),
    ];
    for (section, key) in KEYS {
        // reconnect_min may not exceed reconnect_max.
        let also = if key == "reconnect_min" {
            "\nreconnect_max = \"1d\""
        } else {
            ""
        };
        let c = parse_ok(&with(section, &format!("{key} = \"1d\"{also}")));
        assert!(
            c.summary().contains(&format!("{section}.{key}=1day")),
            "{key}"
        );
        for too_long in ["1d 1s", "300000000000y"] {
            let e = parse_err(&with(section, &format!("{key} = \"{too_long}\"{also}")));
            let dotted = format!("{section}.{key}");
            assert_eq!(e.key(), Some(dotted.as_str()), "{e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("{dotted}: "))
                    && msg.ends_with("is too long (at most 1day)"),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
    let args = cli(&[
        "--upstream-server",
        "localhost:5347",
        "--upstream-domain",
        "proxy.example.test",
        "--upstream-secret-env",
        "MY_SECRET",
        "--target-address",
        "impl@example.test",
        "--iq-timeout",
        "300000000000y",
    ]);
    let env = env_of(&[("MY_SECRET", "a")]);
    let e = load_with_env(&args, &env).expect_err("refused");
    assert_eq!(e.key(), Some("routing.iq_timeout"), "{e}");
    assert_eq!(
        parse_duration("300000000000y").map(|d| d > MAX_DURATION),
        Ok(true),
        "the value parses: only the cap stands between it and a panic"
    );
}

/// The filter is parsed as the subscriber will parse it, so
/// `--check-config` catches what would otherwise fail at start.
#[test]
fn log_level_must_be_a_tracing_filter() {
    for ok in ["info", "jatproxy=debug,info", "warn,jatproxy::router=trace"] {
        let c = parse_ok(&with("log", &format!("level = {ok:?}")));
        assert_eq!(c.log.level, ok);
    }
    for bad in ["jatproxy=loud", "info,[{"] {
        let e = parse_err(&with("log", &format!("level = {bad:?}")));
        assert_eq!(e.key(), Some("log.level"), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("log.level: {bad:?} is not a tracing filter: ")),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
}

/// Every validation failure names its key first.
#[test]
fn validation_errors_name_their_key() {
    let no_upstream = "[client_proxy]\ntarget_address = \"impl@example.test\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{no_upstream}[upstream]\ndomain = \"d.example\"\nsecret = \"x\""),
            "upstream.server",
            "none given",
        ),
        (
            format!("{no_upstream}[upstream]\nserver = \"h:1\"\nsecret = \"x\""),
            "upstream.domain",
            "none given",
        ),
        (
            format!("{no_upstream}[upstream]\nserver = \"h:1\"\ndomain = \"d.example\""),
            "upstream.secret",
            "none given (set secret_file, secret_env, or JATPROXY_UPSTREAM_SECRET)",
        ),
        (
            MINIMAL.replace("127.0.0.1:5347", "127.0.0.1"),
            "upstream.server",
            "HOST:PORT",
        ),
        (
            MINIMAL.replace("127.0.0.1:5347", "host:0"),
            "upstream.server",
            "port",
        ),
        (
            MINIMAL.replace("127.0.0.1:5347", "::1:5347"),
            "upstream.server",
            "brackets",
        ),
        (
            MINIMAL.replace("proxy.example.test", "a b"),
            "upstream.domain",
            "\"a b\" is not a valid domain",
        ),
        (
            MINIMAL.replace("\"proxy.example.test\"", "\"\""),
            "upstream.domain",
            "not a valid domain",
        ),
        (
            MINIMAL.replace("proxy.example.test", "user@proxy.example.test"),
            "upstream.domain",
            "node",
        ),
        (
            MINIMAL.replace("proxy.example.test", "proxy.example.test/r"),
            "upstream.domain",
            "not a valid domain",
        ),
        (
            with("metrics", "listen = \"localhost:9348\""),
            "metrics.listen",
            "not an IP:PORT",
        ),
        (
            with("upstream", "reconnect_min = \"1m\""),
            "upstream.reconnect_min",
            "greater than upstream.reconnect_max",
        ),
        (
            with("upstream", "reconnect_min = \"0s\""),
            "upstream.reconnect_min",
            "greater than zero",
        ),
        (
            with("upstream", "connect_timeout = \"0s\""),
            "upstream.connect_timeout",
            "greater than zero",
        ),
        (
            with("upstream", "handshake_timeout = \"0ms\""),
            "upstream.handshake_timeout",
            "greater than zero",
        ),
        (
            with("upstream", "keepalive_interval = \"0s\""),
            "upstream.keepalive_interval",
            "greater than zero",
        ),
        (
            MINIMAL.replace("impl@example.test", "example.test"),
            "client_proxy.target_address",
            "node part",
        ),
        (
            MINIMAL.replace("impl@example.test", "impl@example.test/res"),
            "client_proxy.target_address",
            "bare JID",
        ),
        (
            MINIMAL.replace("impl@example.test", "a@b@c"),
            "client_proxy.target_address",
            "not a valid JID",
        ),
        (
            MINIMAL.replace("impl@example.test", "impl@Proxy.Example.Test."),
            "client_proxy.target_address",
            "inside the component domain",
        ),
        (
            MINIMAL.replace("target_address = \"impl@example.test\"", ""),
            "client_proxy.target_address",
            "no pool",
        ),
        (
            with("routing", "iq_timeout = \"0s\""),
            "routing.iq_timeout",
            "greater than zero",
        ),
        (
            with("routing", "pending_capacity = 0"),
            "routing.pending_capacity",
            "at least 1",
        ),
        (
            with("client_proxy", "resources = \"re:focus(\""),
            "client_proxy.resources",
            "\"focus(\" is not a valid regex: ",
        ),
        (
            with("client_proxy", "resources = \"\""),
            "client_proxy.resources",
            "matches no resource (empty pattern)",
        ),
        (
            with("client_proxy", "require_feature = \"\""),
            "client_proxy.require_feature",
            "is empty",
        ),
        (
            with("client_proxy", "require_feature = \"urn:a urn:b\""),
            "client_proxy.require_feature",
            "contains whitespace",
        ),
        (
            MINIMAL.replace(
                "target_address = \"impl@example.test\"",
                "resources = \"focus*\"\n[instances]\nlisten = \"127.0.0.1:5348\"\nsecret = \"x\"",
            ),
            "client_proxy.resources",
            "no client pool",
        ),
        (
            MINIMAL.replace(
                "target_address = \"impl@example.test\"",
                "require_feature = \"urn:x\"\n[instances]\nlisten = \"127.0.0.1:5348\"\nsecret = \"x\"",
            ),
            "client_proxy.require_feature",
            "no client pool",
        ),
        (
            with("client_proxy", "qualify_timeout = \"0s\""),
            "client_proxy.qualify_timeout",
            "greater than zero",
        ),
        (
            with("routing", "retry_on = [\"feature-not-implemented\", \"busy\"]"),
            "routing.retry_on",
            "\"busy\" is not a stanza error condition (RFC 6120 8.3.3: bad-request, conflict, ",
        ),
        (
            with("routing", "retry_on = [\"conflict\"]\nretry_limit = 0"),
            "routing.retry_limit",
            "is 0 while routing.retry_on is set",
        ),
        (
            with("routing", "quarantine_for = \"0s\""),
            "routing.quarantine_for",
            "greater than zero",
        ),
        (
            with("instances", "listen = \"localhost:5348\"\nsecret = \"x\""),
            "instances.listen",
            "not an IP:PORT",
        ),
        (
            with("instances", "listen = \"127.0.0.1:5348\""),
            "instances.secret",
            "none given but instances.listen is set",
        ),
        (
            with("instances", "max_connections = 0"),
            "instances.max_connections",
            "at least 1",
        ),
        (
            with("instances", "max_unauthenticated = 0"),
            "instances.max_unauthenticated",
            "at least 1",
        ),
        (
            with("instances", "queue = 0"),
            "instances.queue",
            "at least 1",
        ),
        (
            with("instances", "queue_bytes = 0"),
            "instances.queue_bytes",
            "at least 1",
        ),
        (
            with("limits", "upstream_buffer_bytes = 0"),
            "limits.upstream_buffer_bytes",
            "at least 1",
        ),
        (
            with("instances", "stall_timeout = \"0s\""),
            "instances.stall_timeout",
            "greater than zero",
        ),
        (
            with("limits", "max_stanza_bytes = 4095"),
            "limits.max_stanza_bytes",
            "minimum 4096",
        ),
        (
            with("limits", "max_depth = 0"),
            "limits.max_depth",
            "at least 1",
        ),
        (
            with("limits", "max_token_bytes = 100"),
            "limits.max_token_bytes",
            "minimum 4096",
        ),
        (
            with("limits", "upstream_max_stanza_bytes = 4095"),
            "limits.upstream_max_stanza_bytes",
            "minimum 4096",
        ),
        (
            with("limits", "upstream_max_depth = 0"),
            "limits.upstream_max_depth",
            "at least 1",
        ),
        (
            with("limits", "upstream_max_token_bytes = 4095"),
            "limits.upstream_max_token_bytes",
            "minimum 4096",
        ),
        (
            with("limits", "header_timeout = \"0s\""),
            "limits.header_timeout",
            "greater than zero",
        ),
        (
            with("limits", "idle_timeout = \"0s\""),
            "limits.idle_timeout",
            "greater than zero",
        ),
        (
            with("limits", "write_queue = 0"),
            "limits.write_queue",
            "at least 1",
        ),
        (
            with("limits", "upstream_buffer = 0"),
            "limits.upstream_buffer",
            "at least 1",
        ),
        (with("log", "level = \"  \""), "log.level", "empty"),
    ];
    for (toml, key, fragment) in cases {
        let e = parse_err(&toml);
        let msg = e.to_string();
        assert_eq!(e.key(), Some(key), "{msg}");
        assert!(msg.starts_with(&format!("{key}: ")), "{msg}");
        assert!(msg.contains(fragment), "expected {fragment:?} in {msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
    assert_eq!(
        parse_err(&MINIMAL.replace("proxy.example.test", "a b")).to_string(),
        "upstream.domain: \"a b\" is not a valid domain"
    );
}

#[test]
fn accepted_server_and_listen_forms() {
    for server in ["127.0.0.1:5347", "[::1]:5347", "xmpp.example.test:5275"] {
        let c = parse_ok(&MINIMAL.replace("127.0.0.1:5347", server));
        assert_eq!(c.upstream.server, server);
    }
    let c = parse_ok(&with("instances", "listen = \"[::]:5348\"\nsecret = \"x\""));
    assert_eq!(c.instances.listen, "[::]:5348".parse().ok());
}

#[test]
fn instances_alone_make_a_pool() {
    let toml = MINIMAL.replace("target_address = \"impl@example.test\"", "")
        + "\n[instances]\nlisten = \"127.0.0.1:5348\"\nsecret_env = \"INST\"\n";
    let c =
        from_toml_str_with_env(&toml, &env_of(&[("INST", "i")])).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.client_proxy.target_address.is_none());
    assert_eq!(c.instances.secret.as_ref().map(Secret::expose), Some("i"));
}

#[test]
fn secret_from_file_trims_trailing_whitespace_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "s", "  pass word \n\n");
    let toml = MINIMAL.replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret_file = {:?}", path.display().to_string()),
    );
    let c = parse_ok(&toml);
    assert_eq!(c.upstream.secret.expose(), "  pass word");
    assert_eq!(c.upstream.secret.source(), &SecretSource::File(path));
}

#[test]
fn secret_file_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write_file(dir.path(), "empty", " \n");
    let toml = MINIMAL.replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret_file = {:?}", empty.display().to_string()),
    );
    let e = parse_err(&toml);
    assert_eq!(e.key(), Some("upstream.secret_file"));
    assert!(e.to_string().contains("is empty"), "{e}");

    let file = write_file(
        dir.path(),
        "c.toml",
        &MINIMAL.replace(&format!("secret = \"{SECRET}\""), "secret_file = \"\""),
    );
    let e = load_with_env(&cli(&["--config", &file.display().to_string()]), &no_env)
        .expect_err("empty path");
    assert_eq!(
        e.to_string(),
        "upstream.secret_file: is empty (give a path)"
    );

    let missing = dir.path().join("missing");
    let toml = MINIMAL.replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret_file = {:?}", missing.display().to_string()),
    );
    let e = parse_err(&toml);
    assert_eq!(e.key(), Some("upstream.secret_file"));
    assert!(e.to_string().contains("cannot read"), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
}

/// A relative secret_file in a config file is found next to the file,
/// whatever the working directory.
#[test]
fn relative_secret_file_is_relative_to_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_file(dir.path(), "up.secret", "rel\n");
    let file = write_file(
        dir.path(),
        "c.toml",
        &MINIMAL.replace(
            &format!("secret = \"{SECRET}\""),
            "secret_file = \"up.secret\"",
        ),
    );
    let c = load_with_env(&cli(&["--config", &file.display().to_string()]), &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstream.secret.expose(), "rel");
}

#[test]
fn secret_from_named_env_var() {
    let toml = MINIMAL.replace(&format!("secret = \"{SECRET}\""), "secret_env = \"MY_VAR\"");
    let c = from_toml_str_with_env(&toml, &env_of(&[("MY_VAR", "from-env")]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstream.secret.expose(), "from-env");
    assert_eq!(
        c.upstream.secret.source(),
        &SecretSource::Env("MY_VAR".into())
    );

    let e = from_toml_str_with_env(&toml, &no_env).expect_err("unset");
    assert_eq!(e.key(), Some("upstream.secret_env"));
    assert!(e.to_string().contains("MY_VAR is not set"), "{e}");

    let e = from_toml_str_with_env(&toml, &env_of(&[("MY_VAR", "")])).expect_err("empty");
    assert!(e.to_string().contains("MY_VAR is empty"), "{e}");
}

#[test]
fn fallback_env_vars_apply_only_when_nothing_is_given() {
    let no_secret = MINIMAL.replace(&format!("secret = \"{SECRET}\""), "");
    let env = env_of(&[
        (UPSTREAM_SECRET_VAR, "fallback"),
        (INSTANCE_SECRET_VAR, "fallback-i"),
    ]);
    let c = from_toml_str_with_env(&no_secret, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstream.secret.expose(), "fallback");
    assert_eq!(
        c.upstream.secret.source(),
        &SecretSource::Env(UPSTREAM_SECRET_VAR.into())
    );
    // Not consulted for instances while there is no listener.
    assert!(c.instances.secret.is_none());

    let with_listener = format!("{no_secret}\n[instances]\nlisten = \"127.0.0.1:5348\"\n");
    let c = from_toml_str_with_env(&with_listener, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.instances.secret.as_ref().map(Secret::expose),
        Some("fallback-i")
    );

    // An explicit source wins over the fallback without a conflict.
    let c = from_toml_str_with_env(MINIMAL, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstream.secret.expose(), SECRET);

    let e = from_toml_str_with_env(&no_secret, &env_of(&[(UPSTREAM_SECRET_VAR, "")]))
        .expect_err("empty fallback");
    assert_eq!(e.key(), Some("upstream.secret"));
}

#[test]
fn more_than_one_secret_source_is_an_error() {
    let e = parse_err(&with("upstream", "secret_env = \"X\""));
    assert_eq!(e.key(), Some("upstream.secret"));
    assert_eq!(
        e.to_string(),
        "upstream.secret: more than one source given (secret, secret_env); use exactly one"
    );

    let e = parse_err(&with(
        "instances",
        "listen = \"127.0.0.1:5348\"\nsecret_file = \"/x\"\nsecret_env = \"Y\"",
    ));
    assert_eq!(e.key(), Some("instances.secret"));

    let args = cli(&[
        "--upstream-server",
        "h:1",
        "--domain",
        "d.example",
        "--target-address",
        "i@example.test",
        "--upstream-secret-file",
        "/x",
        "--upstream-secret-env",
        "Y",
    ]);
    let e = load_with_env(&args, &no_env).expect_err("conflict");
    assert_eq!(e.key(), Some("upstream.secret"));
    assert!(e.to_string().contains("more than one source"), "{e}");
}

#[test]
fn cli_secret_source_replaces_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(dir.path(), "c.toml", MINIMAL);
    let args = cli(&[
        "--config",
        &file.display().to_string(),
        "--upstream-secret-env",
        "OTHER",
    ]);
    let c = load_with_env(&args, &env_of(&[("OTHER", "other")])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.upstream.secret.expose(), "other");
}

#[test]
fn secrets_never_show_in_debug_or_summary() {
    let toml = with(
        "instances",
        "listen = \"127.0.0.1:5348\"\nsecret = \"inst-s3cr3t-Kp2\"",
    );
    let c = parse_ok(&toml);
    let debug = format!("{c:?}");
    let pretty = format!("{c:#?}");
    let summary = c.summary();
    for text in [&debug, &pretty, &summary] {
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("inst-s3cr3t-Kp2"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
    assert_eq!(format!("{}", c.upstream.secret), "[redacted]");
    assert_eq!(format!("{:?}", c.upstream.secret), "[redacted]");
    assert_eq!(format!("{:?}", Secret::new("abc")), "[redacted]");
}

#[test]
fn summary_is_one_line_with_every_section() {
    let c = parse_ok(MINIMAL);
    let s = c.summary();
    assert!(!s.contains('\n'), "{s}");
    for needle in [
        "upstream.server=127.0.0.1:5347",
        "upstream.domain=proxy.example.test",
        "upstream.secret=[redacted] upstream.secret_source=inline",
        "upstream.reconnect_min=500ms",
        "client_proxy.target_address=impl@example.test",
        "client_proxy.jat=inline",
        "routing.balancing=random",
        "routing.iq_timeout=30s",
        "routing.hold_when_empty=10s routing.redispatch=get routing.retry_on=none \
         routing.retry_limit=2 routing.quarantine_after=3 routing.quarantine_for=1m",
        "client_proxy.resources=none client_proxy.require_feature=none \
         client_proxy.qualify_timeout=5s",
        "instances.listen=none",
        "limits.max_stanza_bytes=524288",
        "limits.idle_timeout=10m",
        "log.level=\"info\"",
        "log.format=text",
        "service.shutdown_grace=5s",
        "service.worker_threads=auto",
        "metrics.listen=none",
    ] {
        assert!(s.contains(needle), "{needle} missing from {s}");
    }
}

/// The shipped example must parse, and the defaults it documents must be
/// the real ones: it differs from the built-in defaults only in the demo
/// values it is meant to set.
#[test]
fn example_config_parses_and_documents_the_real_defaults() {
    let example = include_str!("../../config.toml");
    let env = env_of(&[(UPSTREAM_SECRET_VAR, "demo")]);
    let c = from_toml_str_with_env(example, &env)
        .unwrap_or_else(|e| panic!("config.toml does not parse: {e}"));
    assert_eq!(c.upstream.server, "127.0.0.1:5347");
    assert_eq!(c.upstream.domain, "proxy.example.test");
    assert_eq!(
        c.upstream.secret.source(),
        &SecretSource::Env(UPSTREAM_SECRET_VAR.into())
    );
    assert_eq!(
        c.client_proxy
            .target_address
            .as_ref()
            .map(|j| j.to_string()),
        Some("impl@example.test".to_owned())
    );

    let minimal = r#"
        [upstream]
        server = "127.0.0.1:5347"
        domain = "proxy.example.test"
        secret_env = "JATPROXY_UPSTREAM_SECRET"
        [client_proxy]
        target_address = "impl@example.test"
    "#;
    let d = from_toml_str_with_env(minimal, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.summary(), d.summary());
}

/// Issue 14: messages and presence are off by default (the module's
/// answers), each on by file or flag, in the summary, and live on reload;
/// the token idle timeout defaults to an hour and may not be zero.
#[test]
fn messages_presence_and_token_idle_timeout() {
    let c = parse_ok(MINIMAL);
    assert!(!c.client_proxy.messages);
    assert!(!c.client_proxy.presence);
    assert_eq!(c.client_proxy.token_idle_timeout, Duration::from_secs(3600));
    assert!(c.summary().contains(
        "client_proxy.messages=false client_proxy.presence=false \
         client_proxy.token_idle_timeout=1h"
    ));
    let file = with(
        "client_proxy",
        "messages = true\npresence = true\ntoken_idle_timeout = \"10m\"",
    );
    let c = parse_ok(&file);
    assert!(c.client_proxy.messages && c.client_proxy.presence);
    assert_eq!(c.client_proxy.token_idle_timeout, Duration::from_secs(600));
    let args = cli(&[
        "--messages",
        "false",
        "--presence",
        "no",
        "--token-idle-timeout",
        "2m",
    ]);
    let mut raw = parse_raw(&file, "t").unwrap_or_else(|e| panic!("{e}"));
    raw.apply_cli(&args);
    let flagged = resolve(raw, &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert!(!flagged.client_proxy.messages && !flagged.client_proxy.presence);
    assert_eq!(
        flagged.client_proxy.token_idle_timeout,
        Duration::from_secs(120)
    );
    let mut keys = Vec::new();
    flagged
        .client_proxy
        .reload_classes(&c.client_proxy, &mut |k, class| keys.push((k, class)));
    assert_eq!(
        keys,
        [
            ("client_proxy.messages", ReloadClass::Live),
            ("client_proxy.presence", ReloadClass::Live),
            ("client_proxy.token_idle_timeout", ReloadClass::Live),
        ]
    );
    let e = parse_err(&with("client_proxy", "token_idle_timeout = \"0s\""));
    assert!(
        e.to_string().contains("client_proxy.token_idle_timeout"),
        "{e}"
    );
}

#[test]
fn redispatch_spellings() {
    for (s, r) in [
        ("none", Redispatch::Off),
        ("get", Redispatch::Get),
        ("all", Redispatch::All),
    ] {
        let c = parse_ok(&with("routing", &format!("redispatch = {s:?}")));
        assert_eq!(c.routing.continuity.redispatch, r);
        assert_eq!(r.to_string(), s);
        assert_eq!(cli(&["--redispatch", s]).routing.redispatch, Some(r));
    }
    let e = parse_err(&with("routing", "redispatch = \"off\""));
    assert_eq!(e.key(), Some("routing.redispatch"), "{e}");
}

/// A retry limit of 0 is fine on its own (nothing to retry), and
/// `--retry-on ""` clears the file's list, so the two can be turned off
/// together from the command line.
#[test]
fn retry_on_and_its_limit() {
    let c = parse_ok(&with("routing", "retry_limit = 0"));
    assert_eq!(c.routing.continuity.retry_limit, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(
        dir.path(),
        "config.toml",
        &with("routing", "retry_on = [\"conflict\"]"),
    );
    let file = file.display().to_string();
    let c = load_with_env(
        &cli(&["--config", &file, "--retry-on", "", "--retry-limit", "0"]),
        &no_env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.routing.continuity.retry_on.is_empty());
    let e = load_with_env(&cli(&["--config", &file, "--retry-limit", "0"]), &no_env)
        .expect_err("retry_on from the file, limit 0 from the flag");
    assert_eq!(e.key(), Some("routing.retry_limit"), "{e}");
    let e = load_with_env(
        &cli(&["--config", &file, "--retry-on", "conflict,nope"]),
        &no_env,
    )
    .expect_err("unknown name from the flag");
    assert_eq!(e.key(), Some("routing.retry_on"), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn continuity_and_admission_as_the_router_reads_them() {
    let c = parse_ok(&format!(
        "{}\n[routing]\nretry_on = [\"gone\"]\nhold_when_empty = \"3s\"",
        MINIMAL.replace(
            "[client_proxy]",
            "[client_proxy]\nresources = \"re:focus|jicofo\"\nrequire_feature = \"urn:x\""
        )
    ));
    let k = &c.routing.continuity;
    assert_eq!(k.hold_when_empty, Duration::from_secs(3));
    assert_eq!(k.redispatch, Redispatch::Get);
    assert_eq!(k.retry_on, [StanzaCondition::Gone]);
    assert_eq!(
        (k.retry_limit, k.quarantine_after, k.quarantine_for),
        (2, 3, Duration::from_secs(60))
    );
    let a = &c.client_proxy.admission;
    let filter = a.resources.as_ref().expect("set");
    assert!(filter.matches("jicofo") && !filter.matches("jicofo2"));
    assert_eq!(a.require_feature.as_deref(), Some("urn:x"));
    assert_eq!(a.qualify_timeout, Duration::from_secs(5));
    // The module's behaviour is one setting away.
    let off = parse_ok(&with(
        "routing",
        "hold_when_empty = \"0s\"\nredispatch = \"none\"",
    ));
    assert_eq!(off.routing.continuity, Continuity::off());
}

/// How a reload applies each new key (see `reload`).
#[test]
fn reload_classes_of_the_continuity_keys() {
    let old = parse_ok(MINIMAL);
    let rows: &[(&str, &str, &str, ReloadClass)] = &[
        (
            "client_proxy",
            "resources = \"focus*\"",
            "client_proxy.resources",
            ReloadClass::Reconnect,
        ),
        (
            "client_proxy",
            "require_feature = \"urn:x\"",
            "client_proxy.require_feature",
            ReloadClass::Reconnect,
        ),
        (
            "client_proxy",
            "qualify_timeout = \"1s\"",
            "client_proxy.qualify_timeout",
            ReloadClass::Live,
        ),
        (
            "routing",
            "hold_when_empty = \"1s\"",
            "routing.hold_when_empty",
            ReloadClass::Live,
        ),
        (
            "routing",
            "redispatch = \"all\"",
            "routing.redispatch",
            ReloadClass::Live,
        ),
        (
            "routing",
            "retry_on = [\"gone\"]",
            "routing.retry_on",
            ReloadClass::Live,
        ),
        (
            "routing",
            "retry_limit = 1",
            "routing.retry_limit",
            ReloadClass::Live,
        ),
        (
            "routing",
            "quarantine_after = 1",
            "routing.quarantine_after",
            ReloadClass::Live,
        ),
        (
            "routing",
            "quarantine_for = \"1s\"",
            "routing.quarantine_for",
            ReloadClass::Live,
        ),
    ];
    for (section, line, key, class) in rows {
        let new = parse_ok(&with(section, line));
        let mut seen = Vec::new();
        let mut out = |k: &'static str, c: ReloadClass| seen.push((k, c));
        old.client_proxy.reload_classes(&new.client_proxy, &mut out);
        old.routing.reload_classes(&new.routing, &mut out);
        assert_eq!(seen, [(*key, *class)], "{line}");
    }
}
