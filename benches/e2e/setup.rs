//! The processes and streams around a run: the fake XMPP server's
//! component port, fake component instances, jatproxy as a child process,
//! and the plain TCP relay (this program again, in relay mode).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jatproxy::handshake;
use jatproxy::xml::inspect;

use crate::tls::{Link, Pki};
use crate::traffic::{target, D};
use crate::wire::{Conn, Read1};

pub const UPSTREAM_SECRET: &str = "bench-upstream-secret";
pub const INSTANCE_SECRET: &str = "bench-instance-secret";
pub const WAIT: Duration = Duration::from_secs(10);
/// Members (`target/m0`, …) the fake server announces for the seed flow.
pub const MEMBERS: usize = 2;

/// The fake server's component port.
pub struct FakeServer {
    listener: TcpListener,
}

impl FakeServer {
    pub fn bind() -> Result<FakeServer, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        Ok(FakeServer { listener })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The next incoming TCP connection, as is.
    pub fn accept_raw(&self, who: &str) -> Result<Conn, String> {
        let s = self.accept_sock(who)?;
        Conn::new(s, who).map_err(|e| e.to_string())
    }

    fn accept_sock(&self, who: &str) -> Result<TcpStream, String> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + WAIT;
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(|e| e.to_string())?;
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(format!("{who}: no connection within {WAIT:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("{who}: accept: {e}")),
            }
        }
    }

    /// Accepts jatproxy's upstream connection and completes XEP-0114 as a
    /// server: header with an id, check sha1(id + secret), `<handshake/>`.
    /// With `tls`, direct TLS first, as the server.
    pub fn accept_component(&self, tls: Option<&Pki>) -> Result<Conn, String> {
        let who = "fake server";
        let sock = self.accept_sock(who)?;
        let link = match tls {
            Some(pki) => pki.accept(sock)?,
            None => Link::Plain(sock),
        };
        let mut c = Conn::over(link, who).map_err(|e| e.to_string())?;
        let h = c.header_within(WAIT)?;
        if h.to() != Some(D) {
            return Err(format!("expected a header to {D}, got {h:?}"));
        }
        c.write_all(&handshake::server_header(D, "bench-stream-1"))?;
        let hs = c.stanza_within(WAIT)?;
        let digest = inspect::element_text(&hs.bytes);
        if hs.name != "handshake" || digest != handshake::digest("bench-stream-1", UPSTREAM_SECRET)
        {
            return Err(format!(
                "bad handshake: {:?}",
                String::from_utf8_lossy(&hs.bytes)
            ));
        }
        c.write_all(b"<handshake/>")?;
        Ok(c)
    }
}

/// Grants jatproxy's subscription to the target and announces the
/// members, as a server with the target's resources online would.
pub fn grant_members(up: &mut Conn) -> Result<(), String> {
    let t = target();
    let sub = up.stanza_within(WAIT)?;
    if sub.stanza_type() != Some("subscribe") || sub.to() != Some(t.as_str()) {
        return Err(format!(
            "expected subscribe, got {:?}",
            String::from_utf8_lossy(&sub.bytes)
        ));
    }
    up.write_all(format!("<presence type='subscribed' from='{t}' to='{D}'/>").as_bytes())?;
    let probe = up.stanza_within(WAIT)?;
    if probe.stanza_type() != Some("probe") {
        return Err(format!(
            "expected probe, got {:?}",
            String::from_utf8_lossy(&probe.bytes)
        ));
    }
    let presences: String = (0..MEMBERS)
        .map(|m| format!("<presence from='{t}/m{m}' to='{D}'/>"))
        .collect();
    up.write_all(presences.as_bytes())
}

/// A component instance connecting to jatproxy's listener (over direct
/// TLS with `tls`).
pub fn connect_instance(addr: SocketAddr, tls: Option<&Pki>) -> Result<Conn, String> {
    let deadline = Instant::now() + WAIT;
    let sock = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("connect to jatproxy's listener {addr}: {e}")),
        }
    };
    let link = match tls {
        Some(pki) => pki.connect(sock)?,
        None => Link::Plain(sock),
    };
    let mut c = Conn::over(link, "instance").map_err(|e| e.to_string())?;
    c.write_all(&handshake::client_header(D))?;
    let id = c.header_within(WAIT)?.id().unwrap_or_default().to_owned();
    c.write_all(&handshake::handshake_element(&handshake::digest(
        &id,
        INSTANCE_SECRET,
    )))?;
    let ok = c.stanza_within(WAIT)?;
    if ok.name != "handshake" {
        return Err(format!(
            "instance refused: {:?}",
            String::from_utf8_lossy(&ok.bytes)
        ));
    }
    Ok(c)
}

/// Waits until a message from upstream reaches the instance: the
/// listener answers the handshake before the core has the instance in
/// its pool, and a message in that gap bounces.
pub fn wait_instance_in_pool(up: &mut Conn, inst: &mut Conn) -> Result<(), String> {
    for k in 0..100 {
        up.write_all(
            format!("<message to='{D}' from='probe@example.test/p' id='probe.{k}' type='chat'/>")
                .as_bytes(),
        )?;
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            if let Read1::Unit(crate::wire::Unit::Stanza(s)) = inst.read()? {
                if s.id() == Some(&format!("probe.{k}")) {
                    return Ok(());
                }
            }
        }
        // It bounced: consume the error.
        let _ = up.stanza_within(Duration::from_millis(500));
    }
    Err("the instance never joined the pool".into())
}

/// A child process killed (by its pid) when dropped.
pub struct ChildProc {
    child: Child,
    pub name: String,
    _dir: Option<tempfile::TempDir>,
}

impl ChildProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running? An exited child is an error with its status.
    pub fn check(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("{} exited: {st}", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What jatproxy serves in a run.
pub enum Role {
    /// Component instances behind a listener on this address.
    Instances(SocketAddr),
    /// The target's resources (the seed flow).
    Clients,
}

/// jatproxy as a child process (its own CPU and memory, as deployed),
/// pointed at `server`. `bin` is the release binary cargo built for this
/// benchmark. With `tls`, direct TLS on both links: to the server
/// (trusting the bench CA) and on the instances' listener.
pub fn start_jatproxy(
    server: SocketAddr,
    role: &Role,
    threads: usize,
    extra: &str,
    tls: Option<&Pki>,
) -> Result<ChildProc, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (up_tls, inst_tls) = match tls {
        Some(p) => (
            format!("tls = \"direct\"\ntls_ca_file = {:?}\n", p.ca),
            format!("tls_cert = {:?}\ntls_key = {:?}\n", p.cert, p.key),
        ),
        None => (String::new(), String::new()),
    };
    let section = match role {
        Role::Instances(addr) => {
            format!("[instances]\nlisten = \"{addr}\"\nsecret = \"{INSTANCE_SECRET}\"\n{inst_tls}")
        }
        Role::Clients => format!("[client_proxy]\ntarget_address = \"{}\"\n", target()),
    };
    // A long ping_interval: the fake server does not answer XEP-0199
    // pings, and a seed proxy idle through the pass runs (> 120 s with
    // E2E_SECONDS of 8 or more) would otherwise ping, and the ping would
    // arrive in a later run as a stray stanza.
    let toml = format!(
        "[upstream]\nserver = \"{server}\"\ndomain = \"{D}\"\nsecret = \"{UPSTREAM_SECRET}\"\n\
         ping_interval = \"24h\"\n{up_tls}\
         {section}\n[log]\nlevel = \"warn\"\n\n[service]\nworker_threads = {threads}\n{extra}\n"
    );
    let cfg = dir.path().join("jatproxy.toml");
    std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.path().join("jatproxy.log")).map_err(|e| e.to_string())?;
    // E2E_TOKENIZER=rxml runs the same benchmark on the reference
    // tokenizer (the default is jatproxy's own default, fast).
    let tokenizer: Vec<String> = std::env::var("E2E_TOKENIZER")
        .map(|t| vec!["--tokenizer".to_owned(), t])
        .unwrap_or_default();
    let child = Command::new(jatproxy_bin())
        .arg("--config")
        .arg(&cfg)
        .args(&tokenizer)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start jatproxy: {e}"))?;
    Ok(ChildProc {
        child,
        name: format!("jatproxy ({threads} thread(s))"),
        _dir: Some(dir),
    })
}

/// The binary under test: `E2E_JATPROXY` if set (to compare two builds
/// alternately in one sitting), else the one cargo built with the bench.
fn jatproxy_bin() -> PathBuf {
    std::env::var_os("E2E_JATPROXY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_jatproxy")),
        PathBuf::from,
    )
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_addr() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

/// The relay as a child process: this benchmark binary in relay mode,
/// forwarding every connection to `target`.
pub fn start_relay(target: SocketAddr, threads: usize) -> Result<(ChildProc, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg(crate::RELAY_MODE)
        .arg(target.to_string())
        .arg(threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let proc = ChildProc {
        child,
        name: format!("relay ({threads} thread(s))"),
        _dir: None,
    };
    let addr = line
        .trim()
        .parse()
        .map_err(|_| format!("relay did not say where it listens: {line:?}"))?;
    Ok((proc, addr))
}

/// Relay mode: accept on a free loopback port (printed on stdout), and
/// splice every connection to `target` with `copy_bidirectional`.
pub fn relay_main(target: &str, threads: usize) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        println!("{}", l.local_addr().map_err(|e| e.to_string())?);
        loop {
            let (mut a, _) = l.accept().await.map_err(|e| e.to_string())?;
            let target = target.to_owned();
            tokio::spawn(async move {
                let Ok(mut b) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let _ = a.set_nodelay(true);
                let _ = b.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    })
}
