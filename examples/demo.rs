//! The demo: a real Prosody on loopback, the real `jatproxy` binary as its
//! external component `proxy.example.test`, two copies of the example
//! implementing client as `impl@example.test/a` and `/b`, and alice as the
//! requester. It prints the translated flow as each party sees it.
//!
//! Run it with `scripts/demo.sh` (installs Prosody if missing, builds, runs).

#[path = "../tests/support/prosody.rs"]
mod prosody;
#[path = "../tests/support/xmpp.rs"]
mod xmpp;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use prosody::{Prosody, ProsodyConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const D: &str = "proxy.example.test";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

/// Binaries built next to this example (`cargo build --release --examples`).
fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let examples = exe.parent().ok_or("no parent dir")?;
    let candidates = [examples.join(name), examples.join("..").join(name)];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| format!("{name} not built; run scripts/demo.sh"))
}

/// Starts a child whose output lines are printed with a prefix and also
/// sent to `lines` so the demo can wait for what it says.
fn spawn(
    label: &'static str,
    cmd: &mut Command,
    lines: mpsc::UnboundedSender<(&'static str, String)>,
) -> Result<Child, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {label}: {e}"))?;
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(line)) = r.next_line().await {
                println!("  {label:>9} | {line}");
                let _ = lines.send((label, line));
            }
        });
    }
    Ok(child)
}

/// Waits until `count` lines from `label` contain `needle`.
async fn wait_lines(
    rx: &mut mpsc::UnboundedReceiver<(&'static str, String)>,
    label: &str,
    needle: &str,
    count: usize,
) -> Result<(), String> {
    let mut seen = 0;
    tokio::time::timeout(WAIT, async {
        while let Some((l, line)) = rx.recv().await {
            if l == label && line.contains(needle) {
                seen += 1;
                if seen == count {
                    return;
                }
            }
        }
    })
    .await
    .map_err(|_| format!("{label} did not say {needle:?} {count} time(s) within {WAIT:?}"))
}

/// Alice's echo requests `ids`, each printed as sent and as answered.
async fn echo_requests(
    alice: &mut xmpp::TestClient,
    ids: std::ops::RangeInclusive<u32>,
) -> Result<(), String> {
    for i in ids {
        let req = format!(
            "<iq type='get' id='req-{i}' to='{D}'><echo xmlns='urn:example:echo'>hello {i}</echo></iq>"
        );
        println!("  alice SEND {req}");
        alice.send_xml(&req).await?;
        let res = alice.recv_iq_response(&format!("req-{i}"), WAIT).await?;
        println!("  alice RECV {}", xmpp::to_xml(&res));
    }
    Ok(())
}

async fn run() -> Result<(), String> {
    let jatproxy = sibling("jatproxy")?;
    // The example implementing client (slixmpp), as users would run it.
    let implementing = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/implementing_client.py"
    ));

    println!("== 1. Prosody on loopback (users alice and impl, component {D}, s2s off)");
    let p = Prosody::start(
        ProsodyConfig::new()
            .log_level("debug")
            .user("alice", "alicepw")
            .user("impl", "implpw")
            .component(D, "demo-secret"),
    )
    .await?;
    println!(
        "   c2s {}  component port {}",
        p.c2s_addr(),
        p.component_addr()
    );
    let result = steps(&p, &jatproxy, &implementing).await;
    if result.is_err() {
        eprintln!(
            "--- the last lines of Prosody's log ---\n{}",
            p.log_tail(60)
        );
    }
    result
}

async fn steps(
    p: &Prosody,
    jatproxy: &std::path::Path,
    implementing: &std::path::Path,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    println!("== 2. jatproxy registers as {D} in front of impl@example.test");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nserver = \"{}\"\ndomain = \"{D}\"\nsecret_env = \"DEMO_SECRET\"\n\n\
             [client_proxy]\ntarget_address = \"impl@example.test\"\n",
            p.component_addr()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut proxy = spawn(
        "jatproxy",
        Command::new(jatproxy)
            .arg("--config")
            .arg(&config)
            .env("DEMO_SECRET", "demo-secret")
            .env("NO_COLOR", "1"),
        tx.clone(),
    )?;
    wait_lines(&mut rx, "jatproxy", "upstream session established", 1).await?;

    println!("== 3. two implementing clients come online and accept the proxy's subscription");
    let mut impls = Vec::new();
    for (label, res) in [("impl/a", "a"), ("impl/b", "b")] {
        impls.push(spawn(
            label,
            Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned()))
                .arg(implementing)
                .arg("--jid")
                .arg(format!("impl@example.test/{res}"))
                .arg("--password")
                .arg("implpw")
                .arg("--server")
                .arg(p.c2s_addr().to_string()),
            tx.clone(),
        )?);
    }
    wait_lines(&mut rx, "jatproxy", "resource joined the pool", 2).await?;

    println!("== 4. alice sends requests to {D}; each goes to one resource, translated");
    let mut alice =
        xmpp::connect("alice@example.test/phone", "alicepw", p.c2s_addr(), WAIT).await?;
    echo_requests(&mut alice, 1..=4).await?;

    println!("== 5. what the module answers with an error, jatproxy answers alike");
    let msg = format!("<message type='chat' to='{D}' id='m1'><body>hi proxy</body></message>");
    println!("  alice SEND {msg}");
    alice.send_xml(&msg).await?;
    let err = alice
        .recv_matching(WAIT, |e| e.attr("id") == Some("m1"))
        .await?;
    println!("  alice RECV {}", xmpp::to_xml(&err));

    println!("== 6. impl/a goes away; every request still gets exactly one answer");
    if let Some(a) = impls.first_mut() {
        let _ = a.kill().await;
    }
    wait_lines(&mut rx, "jatproxy", "resource left the pool", 1).await?;
    echo_requests(&mut alice, 5..=6).await?;

    println!("== 7. SIGTERM: jatproxy answers what is pending, closes its stream, exits 0");
    if let Some(pid) = proxy.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    let status = tokio::time::timeout(WAIT, proxy.wait())
        .await
        .map_err(|_| "jatproxy did not exit".to_string())?
        .map_err(|e| e.to_string())?;
    println!("   jatproxy exited with {status}");
    alice.close().await;
    drop(impls);
    println!("== done");
    Ok(())
}
