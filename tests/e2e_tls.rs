//! Direct TLS on both component links, end to end: upstream to a real
//! ejabberd 23.01 whose `ejabberd_service` has `tls: true` and a
//! `certfile:`, and the instance listener with real slixmpp 1.17
//! `ComponentXMPP` instances connecting with direct TLS. Certificates are
//! made by the test (rcgen): a CA, and a server certificate with a DNS
//! SAN and the IP SAN 127.0.0.1.
//!
//! - the seed flow and the instance pool pass over TLS;
//! - a wrong CA and a wrong server name are each refused with their log
//!   line, counted, and retried; fixing the file and sending SIGHUP brings
//!   the session up;
//! - the listener counts a failed handshake without touching the
//!   connected instance, and a reload with renewed files serves the new
//!   certificate to new instances while the connected one stays.
//!
//! These tests need ejabberd and slixmpp (`scripts/setup.sh`); they fail,
//! never skip, without them.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use jatproxy::config;
use jatproxy::proxy::Proxy;
use jatproxy::status::Side;
use support::certs::{self, Certs};
use support::echo::EchoComponent;
use support::ejabberd::{Ejabberd, EjabberdConfig};
use support::flows::{load, responder, seed_request};
use support::setup::{spawn_jatproxy, start_registered, upstream_toml};
use support::xmpp::{self, TestClient};
use support::{ALICE, D, NS_ECHO, PW, SECRET, T, WAIT, WINDOW};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;

const INSTANCE_SECRET: &str = "instance-secret";

/// ejabberd with alice and impl, the component `D` on a direct-TLS port
/// serving `certs`, and impl's roster holding `D` (subscription `from`).
async fn ejabberd_tls(certs: &Certs) -> Ejabberd {
    Ejabberd::start(
        EjabberdConfig::new()
            .user("alice", PW)
            .user("impl", PW)
            .component(D, SECRET)
            .roster_item("impl", D, "from")
            .component_tls(&certs.combined),
    )
    .await
    .unwrap_or_else(|e| panic!("ejabberd starts (is it installed? run scripts/setup.sh): {e}"))
}

/// The `[upstream]` table with direct TLS trusting `ca`; the server name
/// is the default (the host of `upstream.server`: 127.0.0.1, the IP SAN).
fn tls_upstream(e: &Ejabberd, ca: &std::path::Path, extra: &str) -> String {
    format!(
        "{}tls = \"direct\"\ntls_ca_file = \"{}\"\n{extra}",
        upstream_toml(e.component_addr()),
        ca.display()
    )
}

async fn client(e: &Ejabberd, jid: &str) -> TestClient {
    let c = xmpp::connect(jid, PW, e.c2s_addr(), WAIT)
        .await
        .unwrap_or_else(|err| panic!("{err}\nejabberd log:\n{}", e.log_tail(30)));
    c.send_presence().await.expect("presence");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_over_tls_to_ejabberd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make(dir.path(), "", "jatproxy test CA");
    let e = ejabberd_tls(&certs).await;
    let toml = format!(
        "{}\n[routing]\niq_timeout = \"10s\"\n[client_proxy]\ntarget_address = \"{T}\"\n",
        tls_upstream(&e, &certs.ca, "")
    );
    let proxy = start_registered(&toml, || e.log_tail(30)).await;
    let mut a = client(&e, &format!("{T}/a")).await;
    assert!(
        proxy.wait_for(WAIT, |s| s.pool.len() == 1).await,
        "impl/a's presence reaches the proxy over TLS: {:?}",
        proxy.status()
    );
    let mut alice = client(&e, &format!("{ALICE}/phone")).await;
    seed_request(&mut a, &mut alice).await;
    let ra = responder(a);
    let n = 200;
    let answers = load(&mut alice, D, n, WINDOW, "tls-").await;
    assert_eq!(answers.len(), n, "none lost");
    for v in answers.values() {
        assert_eq!(v.len(), 1, "exactly one answer: {v:?}");
        assert_eq!(v[0].0, "result", "{v:?}");
    }
    println!("seed flow over TLS to ejabberd: {n} requests, one result each");
    ra.abort();
    assert!(proxy.shutdown(WAIT).await);
}

/// Requests from alice to `D`, each answered by an instance; the answers
/// per instance name.
async fn echo_requests(alice: &mut TestClient, prefix: &str, n: usize) -> HashMap<String, usize> {
    let mut per: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        alice
            .send_xml(&format!(
                "<iq id='{prefix}{i}' to='{D}' type='get'><echo xmlns='{NS_ECHO}'>{i}</echo></iq>"
            ))
            .await
            .expect("send");
        let r = alice
            .recv_iq_response(&format!("{prefix}{i}"), WAIT)
            .await
            .unwrap_or_else(|err| panic!("{prefix}{i}: {err}"));
        assert_eq!(r.attr("type"), Some("result"), "{}", xmpp::to_xml(&r));
        let echo = r.get_child("echo", NS_ECHO).expect("echo payload");
        assert_eq!(echo.text(), i.to_string());
        *per.entry(echo.attr("from-instance").unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    per
}

/// A slixmpp instance connecting with direct TLS, trusting `ca`.
async fn tls_instance(listener: SocketAddr, name: &str, ca: &std::path::Path) -> EchoComponent {
    let ca = ca.display().to_string();
    EchoComponent::start_with(listener, D, INSTANCE_SECRET, name, &["--tls-ca", &ca], WAIT)
        .await
        .unwrap_or_else(|err| panic!("{err}"))
}

/// TLS on both links: upstream to ejabberd, and slixmpp instances on the
/// listener. A plain-TCP peer on the TLS listener is refused and counted
/// and the connected instance is untouched; then the listener's files are
/// renewed in place (a new CA) and reloaded: the connected instance keeps
/// serving, a new one trusting the new CA comes in, and one trusting only
/// the old CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_pool_over_tls_on_both_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = certs::make(dir.path(), "up-", "ejabberd's CA");
    let listen = certs::make(dir.path(), "listen-", "listener CA one");
    // The first CA, kept aside: the listener's files are renewed in place.
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(&listen.ca, &old_ca).expect("copy");
    let e = ejabberd_tls(&up).await;
    let toml = format!(
        "{}\n[instances]\nlisten = \"127.0.0.1:0\"\nsecret = \"{INSTANCE_SECRET}\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        tls_upstream(&e, &up.ca, ""),
        listen.cert.display(),
        listen.key.display()
    );
    let proxy = start_registered(&toml, || e.log_tail(30)).await;
    let listener = proxy.listen_addr().expect("listener");
    let _one = tls_instance(listener, "one", &old_ca).await;
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 1).await);
    let mut alice = client(&e, &format!("{ALICE}/phone")).await;
    assert_eq!(
        echo_requests(&mut alice, "a-", 50).await.get("one"),
        Some(&50)
    );

    // A peer speaking plain XEP-0114 to the TLS listener.
    let mut plain = tokio::net::TcpStream::connect(listener)
        .await
        .expect("connect");
    plain
        .write_all(
            b"<stream:stream xmlns='jabber:component:accept' \
              xmlns:stream='http://etherx.jabber.org/streams' to='proxy.example.test'>",
        )
        .await
        .expect("write");
    let counted = |proxy: &Proxy, reason: &'static str| {
        proxy
            .status()
            .counters
            .tls_handshake_failures
            .get(&(Side::Instance, reason))
            .copied()
            .unwrap_or(0)
    };
    assert!(
        proxy
            .wait_for(WAIT, |s| s
                .counters
                .tls_handshake_failures
                .contains_key(&(Side::Instance, "not-tls")))
            .await,
        "the plain peer's failed handshake is counted: {:?}",
        proxy.status().counters
    );
    drop(plain);
    assert_eq!(
        echo_requests(&mut alice, "b-", 20).await.get("one"),
        Some(&20)
    );

    // Renewed in place: a new CA and certificate under the same paths.
    let renewed = certs::make(dir.path(), "listen-", "listener CA two");
    let cfg = config::from_toml_str(&toml).expect("still valid");
    let plan = proxy.reload(cfg).await.expect("reload applied");
    assert_eq!(plan.next_connection, ["instances.tls_cert"], "{plan:?}");
    let _two = tls_instance(listener, "two", &renewed.ca).await;
    assert!(proxy.wait_for(WAIT, |s| s.pool.len() == 2).await);
    // One trusting only the old CA is refused by its own check.
    let refused = EchoComponent::start_with(
        listener,
        D,
        INSTANCE_SECRET,
        "stale",
        &["--tls-ca", &old_ca.display().to_string()],
        Duration::from_secs(5),
    )
    .await;
    assert!(refused.is_err(), "an instance trusting the old CA got in");
    // The connected instance kept its session through the reload.
    let per = echo_requests(&mut alice, "c-", 100).await;
    println!("instances over TLS after a renewal: {per:?}");
    assert!(per.get("one").copied().unwrap_or(0) > 10, "{per:?}");
    assert!(per.get("two").copied().unwrap_or(0) > 10, "{per:?}");
    assert!(counted(&proxy, "not-tls") >= 1);
    assert!(proxy.shutdown(WAIT).await);
}

/// Lines containing every one of `what`, waited for until `count` of
/// them arrived; panics with everything seen otherwise.
async fn wait_lines(
    rx: &mut mpsc::UnboundedReceiver<(&'static str, String)>,
    seen: &mut Vec<String>,
    what: &[&str],
    count: usize,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let matching: Vec<String> = seen
            .iter()
            .filter(|l| what.iter().all(|w| l.contains(w)))
            .cloned()
            .collect();
        if matching.len() >= count {
            return matching;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((_, l))) => seen.push(l),
            _ => panic!(
                "no {count} lines with {what:?}; jatproxy said:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The value of the series `series`, in one scrape.
async fn metric(addr: SocketAddr, series: &str) -> u64 {
    let text = support::scrape::scrape(addr).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A wrong CA, then a wrong server name: each refused with one log line
/// naming the server and the reason, counted, and retried with the
/// backoff; the fixed file, reloaded with SIGHUP, brings the session up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_and_wrong_name_are_refused_and_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = certs::make(dir.path(), "", "ejabberd's CA");
    let other = certs::make(dir.path(), "other-", "some other CA");
    let e = ejabberd_tls(&good).await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let write_config = |ca: &std::path::Path, extra: &str| {
        let toml = format!(
            "{}[client_proxy]\ntarget_address = \"{T}\"\n[metrics]\nlisten = \"{metrics}\"\n",
            tls_upstream(&e, ca, extra)
        );
        std::fs::write(dir.path().join("jatproxy.toml"), toml).expect("write config");
    };
    write_config(&other.ca, "");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let child = spawn_jatproxy("tls", &dir.path().join("jatproxy.toml"), tx);
    let pid = child.id().expect("pid").to_string();
    let mut seen = Vec::new();
    let server = e.component_addr().to_string();

    let unknown = wait_lines(&mut rx, &mut seen, &[&server, "(unknown-ca)"], 2).await;
    println!("wrong CA: {}", unknown[0]);
    let series = "jatproxy_tls_handshake_failures_total{link=\"upstream\",reason=\"unknown-ca\"}";
    assert!(metric(metrics, series).await >= 2, "counted");

    write_config(&good.ca, "tls_server_name = \"wrong.example.test\"\n");
    signal(&pid, "-HUP").await;
    let mismatch = wait_lines(&mut rx, &mut seen, &[&server, "(name-mismatch)"], 2).await;
    println!("wrong name: {}", mismatch[0]);
    let series =
        "jatproxy_tls_handshake_failures_total{link=\"upstream\",reason=\"name-mismatch\"}";
    assert!(metric(metrics, series).await >= 2, "counted");

    // The DNS name in the certificate is right too.
    write_config(
        &good.ca,
        &format!("tls_server_name = \"{}\"\n", certs::SERVER_NAME),
    );
    signal(&pid, "-HUP").await;
    wait_lines(&mut rx, &mut seen, &["upstream session established"], 1).await;
    for l in &seen {
        assert!(!l.contains(SECRET), "a secret in the log: {l}");
    }
    drop(child);
}

async fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(pid)
        .status()
        .await
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// An expired server certificate is named as such, counted and retried.
/// The server is a bare TLS acceptor (ejabberd would serve it the same
/// way): what is under test is jatproxy's side of the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_named_counted_and_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make_with(dir.path(), "", "a CA", true);
    let acceptor = acceptor(&certs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepts = tokio::spawn(async move {
        for n in 1.. {
            let Ok((sock, _)) = listener.accept().await else {
                return n - 1;
            };
            let _ = acceptor.accept(sock).await;
            if n == 3 {
                return n;
            }
        }
        0
    });
    let toml = format!(
        "{}tls = \"direct\"\ntls_ca_file = \"{}\"\n[client_proxy]\ntarget_address = \"{T}\"\n",
        upstream_toml(addr),
        certs.ca.display()
    );
    let proxy = Proxy::start(config::from_toml_str(&toml).expect("valid"))
        .await
        .expect("start");
    let expired = (Side::Upstream, "expired");
    assert!(
        proxy
            .wait_for(WAIT, |s| s
                .counters
                .tls_handshake_failures
                .get(&expired)
                .is_some_and(|n| *n >= 2))
            .await,
        "two expired handshakes counted: {:?}",
        proxy.status().counters
    );
    assert!(!proxy.status().upstream_online);
    let attempts = tokio::time::timeout(WAIT, accepts)
        .await
        .expect("a third attempt")
        .expect("join");
    assert_eq!(attempts, 3, "retried");
    assert!(proxy.shutdown(WAIT).await);
}

/// A TLS acceptor serving `certs`' server certificate.
fn acceptor(certs: &Certs) -> tokio_rustls::TlsAcceptor {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::ServerConfig;

    let chain = CertificateDer::pem_file_iter(&certs.cert)
        .expect("read")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(&certs.key).expect("key");
    // ring, as jatproxy builds it (deprecated only for lacking
    // post-quantum key exchange).
    #[allow(deprecated)]
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let server = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(server))
}
