//! The TLS keys of both sections: parsing, flags, validation of the
//! files, and what a reload makes of renewed files. Certificates are made
//! here with rcgen; no key is committed.

use super::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use std::net::{IpAddr, Ipv4Addr};

const BASE: &str = r#"
    [upstream]
    server = "xmpp.example.test:5347"
    domain = "proxy.example.test"
    secret = "s3cr3t-Zq9-do-not-log"

    [client_proxy]
    target_address = "impl@example.test"
"#;

fn no_env(_: &str) -> Option<OsString> {
    None
}

/// A CA and a server certificate it signed for `xmpp.example.test` and
/// 127.0.0.1, written as PEM files into `dir`: `ca.pem`, `cert.pem`,
/// `key.pem`.
fn write_certs(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let mut leaf = CertificateParams::new(vec!["xmpp.example.test".to_owned()]).expect("params");
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let key = KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &ca).expect("leaf certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
}

fn parse(extra_upstream: &str, instances: &str) -> Result<Config, ConfigError> {
    let text = BASE.replace("[upstream]", &format!("[upstream]\n{extra_upstream}"));
    let text = format!("{text}\n[instances]\n{instances}\n");
    from_toml_str_with_env(&text, &no_env)
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn direct_tls_upstream_with_a_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let extra = format!(
        "tls = \"direct\"\ntls_ca_file = \"{}\"\n",
        p(dir.path(), "ca.pem")
    );
    let cfg = parse(&extra, "").expect("valid");
    let tls = cfg.upstream.tls.as_ref().expect("TLS on");
    // The default name is the host of upstream.server.
    assert_eq!(tls.server_name.to_str(), "xmpp.example.test");
    assert_eq!(tls.ca, CaSource::File(dir.path().join("ca.pem")));
    let summary = cfg.summary();
    assert!(
        summary.contains("upstream.tls=direct upstream.tls_server_name=xmpp.example.test"),
        "{summary}"
    );
    // An IP address is a name too (matched against an IP SAN).
    let extra = format!("{extra}tls_server_name = \"127.0.0.1\"\n");
    let cfg = parse(&extra, "").expect("valid");
    assert_eq!(
        cfg.upstream.tls.expect("on").server_name.to_str(),
        "127.0.0.1"
    );
    // Without the key the link is plain, and says so.
    assert!(parse("", "")
        .expect("valid")
        .summary()
        .contains("upstream.tls=none"));
}

#[test]
fn tls_errors_name_the_key_and_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let missing = p(dir.path(), "nope.pem");
    let cases = [
        (
            format!("tls = \"direct\"\ntls_ca_file = \"{missing}\"\n"),
            "upstream.tls_ca_file",
            Some(missing.as_str()),
        ),
        (
            "tls = \"starttls\"\n".to_owned(),
            "upstream.tls",
            Some("starttls"),
        ),
        (
            format!("tls_ca_file = \"{}\"\n", p(dir.path(), "ca.pem")),
            "upstream.tls_ca_file",
            Some("has no effect"),
        ),
        (
            format!(
                "tls = \"direct\"\ntls_ca_file = \"{}\"\ntls_cert = \"{}\"\n",
                p(dir.path(), "ca.pem"),
                p(dir.path(), "cert.pem")
            ),
            "upstream.tls_key",
            Some("give both"),
        ),
        (
            // A key file is not a certificate.
            format!(
                "tls = \"direct\"\ntls_ca_file = \"{}\"\n",
                p(dir.path(), "key.pem")
            ),
            "upstream.tls_ca_file",
            Some("no CERTIFICATE"),
        ),
    ];
    for (extra, key, says) in cases {
        let e = parse(&extra, "").expect_err(&extra);
        assert_eq!(e.key(), Some(key), "{extra}: {e}");
        if let Some(says) = says {
            assert!(e.to_string().contains(says), "{extra}: {e}");
        }
    }
}

#[test]
fn listener_tls_is_read_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let listener = |cert: &str, key: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nsecret = \"i\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p(dir.path(), cert),
            p(dir.path(), key)
        )
    };
    let cfg = parse("", &listener("cert.pem", "key.pem")).expect("valid");
    let tls = cfg.instances.tls.as_ref().expect("TLS on");
    assert_eq!(tls.cert, dir.path().join("cert.pem"));
    // Debug shows paths, not keys.
    let debug = format!("{:?}", cfg.instances);
    assert!(!debug.contains("PRIVATE"), "{debug}");

    // A key that is not the certificate's.
    let other = KeyPair::generate().expect("key");
    std::fs::write(dir.path().join("other.pem"), other.serialize_pem()).expect("write");
    let e = parse("", &listener("cert.pem", "other.pem")).expect_err("mismatch");
    assert_eq!(e.key(), Some("instances.tls_key"), "{e}");

    // Garbage in the key file: named, and never echoed.
    std::fs::write(dir.path().join("junk.pem"), "hunter2-not-a-key").expect("write");
    let e = parse("", &listener("cert.pem", "junk.pem")).expect_err("junk");
    assert_eq!(e.key(), Some("instances.tls_key"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(e.to_string().contains("junk.pem"), "{e}");

    // Unreadable.
    let e = parse("", &listener("gone.pem", "key.pem")).expect_err("unreadable");
    assert_eq!(e.key(), Some("instances.tls_cert"), "{e}");
    assert!(e.to_string().contains("gone.pem"), "{e}");
}

#[test]
fn flags_set_every_tls_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let (ca, cert, key) = (
        p(dir.path(), "ca.pem"),
        p(dir.path(), "cert.pem"),
        p(dir.path(), "key.pem"),
    );
    let argv = [
        "jatproxy",
        "--upstream-server",
        "127.0.0.1:5347",
        "--domain",
        "proxy.example.test",
        "--upstream-secret-env",
        "SECRET",
        "--upstream-tls",
        "direct",
        "--upstream-tls-server-name",
        "xmpp.example.test",
        "--upstream-tls-ca-file",
        &ca,
        "--upstream-tls-cert",
        &cert,
        "--upstream-tls-key",
        &key,
        "--instances-listen",
        "127.0.0.1:0",
        "--instance-secret-env",
        "SECRET",
        "--instances-tls-cert",
        &cert,
        "--instances-tls-key",
        &key,
    ];
    let cli = Cli::try_parse_from(argv).expect("flags parse");
    let env = |k: &str| (k == "SECRET").then(|| OsString::from("x"));
    let cfg = load_with_env(&cli, &env).expect("valid");
    let up = cfg.upstream.tls.as_ref().expect("upstream TLS");
    assert_eq!(up.server_name.to_str(), "xmpp.example.test");
    assert_eq!(
        up.client_cert.as_deref(),
        Some(dir.path().join("cert.pem").as_path())
    );
    assert!(cfg.instances.tls.is_some());
}

/// Renewed files under the same paths are a change: the listener's for
/// new connections, upstream's by reconnecting. Re-reading unchanged
/// files is none.
#[test]
fn a_reload_sees_renewed_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let upstream = format!(
        "tls = \"direct\"\ntls_ca_file = \"{}\"\n",
        p(dir.path(), "ca.pem")
    );
    let instances = format!(
        "listen = \"127.0.0.1:0\"\nsecret = \"i\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        p(dir.path(), "cert.pem"),
        p(dir.path(), "key.pem")
    );
    let old = parse(&upstream, &instances).expect("valid");
    let same = parse(&upstream, &instances).expect("valid");
    assert!(crate::reload::plan(&old, &same).expect("plan").is_empty());
    assert!(!crate::reload::upstream_needs_reconnect(&old, &same));

    write_certs(dir.path());
    let renewed = parse(&upstream, &instances).expect("valid");
    let plan = crate::reload::plan(&old, &renewed).expect("plan");
    assert_eq!(plan.next_connection, ["instances.tls_cert"]);
    assert_eq!(plan.reconnect, ["upstream.tls"]);
    assert!(crate::reload::upstream_needs_reconnect(&old, &renewed));
}
