//! A private Prosody 0.12 instance for integration tests and examples.
//!
//! Self-contained: depends only on `std`, `tokio` and `tempfile`, never on the
//! jatproxy crate. Integration tests get it through `tests/support/mod.rs`
//! (`mod support;`); an example can include it directly with
//! `#[path = "../tests/support/prosody.rs"] mod prosody;`.
//!
//! Every instance lives in its own temporary directory (config, data, pid
//! file, log), listens on 127.0.0.1 only, on ports picked at start, and runs
//! with s2s disabled, so it never reaches outside the machine. Only `*.test`
//! domains should be used.
//!
//! `start`, `stop` and `restart` are `async` (they poll with tokio timers so
//! that they do not block other tasks of a single-threaded test runtime);
//! `Drop` kills it (SIGKILL) and removes the temp dir; `stop` is the graceful
//! SIGTERM (then SIGKILL after [`STOP_DEADLINE`]).
//!
//! ```ignore
//! let server = Prosody::start(
//!     ProsodyConfig::new()
//!         .user("alice", "alicepw")
//!         .user("impl", "implpw")
//!         .component("proxy.example.test", "s3cret")
//!         .roster_item("impl", "proxy.example.test", Subscription::From),
//! )
//! .await?;
//! let c2s: std::net::SocketAddr = server.c2s_addr();
//! ```

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start` waits for both ports to be served.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a stop waits after SIGTERM before sending SIGKILL.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// The binaries used (Debian's `prosody` package).
pub const PROSODY_BIN: &str = "prosody";
pub const PROSODYCTL_BIN: &str = "prosodyctl";

/// Roster subscription state of a contact, as stored by Prosody.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    None,
    /// The contact receives the user's presence.
    From,
    /// The user receives the contact's presence.
    To,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::From => "from",
            Subscription::To => "to",
            Subscription::Both => "both",
        }
    }
}

/// An external (XEP-0114) component the server accepts.
#[derive(Clone, Debug)]
pub struct ComponentConfig {
    pub domain: String,
    pub secret: String,
    /// `component_conflict_resolve` (e.g. `"kick_old"`); `None` keeps Prosody's
    /// default (a second connection is refused with `conflict`).
    pub conflict_resolve: Option<String>,
}

/// What to put into the server. Build with [`ProsodyConfig::new`] and the
/// chained setters.
#[derive(Clone, Debug)]
pub struct ProsodyConfig {
    /// The one VirtualHost; default `example.test`.
    pub vhost: String,
    /// (username, password) registered with prosodyctl before the first start.
    pub users: Vec<(String, String)>,
    pub components: Vec<ComponentConfig>,
    /// (user, contact, subscription): written into `user`'s roster before the
    /// first start (see [`Prosody::set_roster`]).
    pub roster: Vec<(String, String, Subscription)>,
    /// Prosody log level written to the log file: "debug" (default), "info", ...
    pub log_level: String,
    /// Extra Lua lines appended to the global section.
    pub extra_global: String,
    /// Extra Lua lines appended to the VirtualHost section.
    pub extra_vhost: String,
}

impl Default for ProsodyConfig {
    fn default() -> Self {
        ProsodyConfig {
            vhost: "example.test".to_string(),
            users: Vec::new(),
            components: Vec::new(),
            roster: Vec::new(),
            log_level: "debug".to_string(),
            extra_global: String::new(),
            extra_vhost: String::new(),
        }
    }
}

impl ProsodyConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn vhost(mut self, vhost: &str) -> Self {
        self.vhost = vhost.to_string();
        self
    }

    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_string(), password.to_string()));
        self
    }

    pub fn component(mut self, domain: &str, secret: &str) -> Self {
        self.components.push(ComponentConfig {
            domain: domain.to_string(),
            secret: secret.to_string(),
            conflict_resolve: None,
        });
        self
    }

    pub fn component_with_conflict_resolve(
        mut self,
        domain: &str,
        secret: &str,
        conflict_resolve: &str,
    ) -> Self {
        self.components.push(ComponentConfig {
            domain: domain.to_string(),
            secret: secret.to_string(),
            conflict_resolve: Some(conflict_resolve.to_string()),
        });
        self
    }

    /// `user`'s roster gets `contact` with `subscription` (e.g. the target
    /// account's roster holds the component domain with `From`, so Prosody
    /// sends the target's presence to the component).
    pub fn roster_item(mut self, user: &str, contact: &str, subscription: Subscription) -> Self {
        self.roster
            .push((user.to_string(), contact.to_string(), subscription));
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    pub fn extra_global(mut self, lua: &str) -> Self {
        self.extra_global.push_str(lua);
        self.extra_global.push('\n');
        self
    }

    pub fn extra_vhost(mut self, lua: &str) -> Self {
        self.extra_vhost.push_str(lua);
        self.extra_vhost.push('\n');
        self
    }
}

/// A running (or stopped) private Prosody. Killed (SIGKILL) on drop; the
/// temp dir is removed on drop too.
pub struct Prosody {
    config: ProsodyConfig,
    dir: tempfile::TempDir,
    c2s_port: u16,
    component_port: u16,
    child: Option<Child>,
    /// Length of the log file when the current run started (so that checks on
    /// the log only look at the current run).
    log_offset: u64,
    startup: Duration,
}

impl Prosody {
    /// Creates the temp dir, writes the config, registers the users, writes
    /// the roster items, starts Prosody in the foreground (`-F`) and waits
    /// until its c2s and component ports accept connections. Fails (with the
    /// tail of the log) if Prosody exits or does not come up in
    /// [`START_DEADLINE`]. Retries with fresh ports if a port was taken in the
    /// meantime.
    pub async fn start(config: ProsodyConfig) -> Result<Prosody, String> {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("prosody-test-")
                .tempdir()
                .map_err(|e| format!("cannot create temp dir: {e}"))?;
            let (c2s_port, component_port) = free_port_pair()?;
            let mut p = Prosody {
                config: config.clone(),
                dir,
                c2s_port,
                component_port,
                child: None,
                log_offset: 0,
                startup: Duration::ZERO,
            };
            p.write_config()?;
            for (user, pw) in &p.config.users.clone() {
                p.register(user, pw)?;
            }
            let mut rosters: BTreeMap<String, Vec<(String, Subscription)>> = BTreeMap::new();
            for (user, contact, sub) in &p.config.roster {
                rosters
                    .entry(user.clone())
                    .or_default()
                    .push((contact.clone(), *sub));
            }
            for (user, items) in &rosters {
                let items: Vec<(&str, Subscription)> =
                    items.iter().map(|(c, s)| (c.as_str(), *s)).collect();
                p.set_roster(user, &items)?;
            }
            match p.launch().await {
                Ok(()) => return Ok(p),
                Err(LaunchError::PortTaken(msg)) => {
                    last_err = msg;
                    continue;
                }
                Err(LaunchError::Fatal(msg)) => return Err(msg),
            }
        }
        Err(format!(
            "prosody could not bind its ports in 3 attempts: {last_err}"
        ))
    }

    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.c2s_port))
    }

    /// Served only when at least one component is configured (Prosody does
    /// not open `component_ports` otherwise).
    pub fn component_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.component_port))
    }

    pub fn vhost(&self) -> &str {
        &self.config.vhost
    }

    pub fn config(&self) -> &ProsodyConfig {
        &self.config
    }

    /// The temp dir holding config, data, pid file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("prosody.cfg.lua")
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prosody.log")
    }

    /// Process id of the running Prosody (the `lua5.4` process itself:
    /// `/usr/bin/prosody` is a Lua script), e.g. to read `/proc/PID/stat`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How long the last (re)start took, from spawn to both ports served.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The whole log file (all runs of this instance), plus what Prosody
    /// wrote to stdout/stderr.
    pub fn log_text(&self) -> String {
        let mut s = fs::read_to_string(self.log_path()).unwrap_or_default();
        for name in ["stdout.txt", "stderr.txt"] {
            if let Ok(t) = fs::read_to_string(self.dir.path().join(name)) {
                if !t.trim().is_empty() {
                    let _ = write!(s, "\n--- prosody {name} ---\n{t}");
                }
            }
        }
        s
    }

    /// The last `lines` lines of [`Self::log_text`].
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_text(), lines)
    }

    /// `prosodyctl --config FILE register USER HOST PASSWORD` on the vhost.
    /// Works whether the server runs or not (it writes the data files).
    pub fn register(&self, user: &str, password: &str) -> Result<(), String> {
        let out = Command::new(PROSODYCTL_BIN)
            .arg("--config")
            .arg(self.config_path())
            .arg("register")
            .arg(user)
            .arg(&self.config.vhost)
            .arg(password)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {PROSODYCTL_BIN}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "prosodyctl register {user}@{} failed ({}): {}{}",
                self.config.vhost,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Replaces `user`'s roster (on the vhost) with `items`, by writing
    /// Prosody's internal storage file `data/<host>/roster/<user>.dat`.
    /// Only while the server is stopped: a running Prosody caches rosters of
    /// online users and would overwrite the file.
    pub fn set_roster(&mut self, user: &str, items: &[(&str, Subscription)]) -> Result<(), String> {
        if self.is_running() {
            return Err("set_roster: stop Prosody first".to_string());
        }
        let dir = self
            .data_path()
            .join(prosody_encode(&self.config.vhost))
            .join("roster");
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let file = dir.join(format!("{}.dat", prosody_encode(user)));
        fs::write(&file, roster_lua(items)).map_err(|e| format!("write {}: {e}", file.display()))
    }

    /// SIGTERM, wait up to [`STOP_DEADLINE`] for exit, then SIGKILL.
    /// Does nothing if not running. Data and ports are kept for `restart`.
    pub async fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        sigterm(child.id());
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "prosody did not exit within {STOP_DEADLINE:?} of SIGTERM; killed"
                    ));
                }
            }
        }
    }

    /// SIGKILL now (no stream closes sent to clients); data files stay.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (if running) and starts again with the same config, ports and
    /// data.
    pub async fn restart(&mut self) -> Result<(), String> {
        if let Err(e) = self.stop().await {
            // It had to be killed; it is gone all the same.
            eprintln!("prosody restart: {e}");
        }
        match self.launch().await {
            Ok(()) => Ok(()),
            Err(LaunchError::PortTaken(m)) | Err(LaunchError::Fatal(m)) => Err(m),
        }
    }

    fn write_config(&self) -> Result<(), String> {
        let d = self.dir.path();
        for sub in ["data", "certs"] {
            fs::create_dir_all(d.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(s, "-- written by tests/support/prosody.rs");
        let _ = writeln!(s, "run_as_root = true");
        let _ = writeln!(
            s,
            "pidfile = {}",
            lua_str(&d.join("prosody.pid").to_string_lossy())
        );
        let _ = writeln!(
            s,
            "data_path = {}",
            lua_str(&d.join("data").to_string_lossy())
        );
        let _ = writeln!(
            s,
            "certificates = {}",
            lua_str(&d.join("certs").to_string_lossy())
        );
        let _ = writeln!(
            s,
            "log = {{ {{ levels = {{ min = {} }}, to = \"file\", filename = {} }} }}",
            lua_str(&c.log_level),
            lua_str(&self.log_path().to_string_lossy())
        );
        let _ = writeln!(s, "interfaces = {{ \"127.0.0.1\" }}");
        let _ = writeln!(s, "c2s_ports = {{ {} }}", self.c2s_port);
        let _ = writeln!(s, "c2s_direct_tls_ports = {{ }}");
        let _ = writeln!(s, "legacy_ssl_ports = {{ }}");
        let _ = writeln!(s, "component_ports = {{ {} }}", self.component_port);
        let _ = writeln!(s, "component_interface = \"127.0.0.1\"");
        // Keep the server off the network: no server-to-server at all.
        let _ = writeln!(s, "modules_disabled = {{ \"s2s\" }}");
        let _ = writeln!(
            s,
            "modules_enabled = {{ \"roster\", \"saslauth\", \"disco\", \"ping\" }}"
        );
        let _ = writeln!(s, "c2s_require_encryption = false");
        let _ = writeln!(s, "s2s_require_encryption = false");
        let _ = writeln!(s, "allow_unencrypted_plain_auth = true");
        let _ = writeln!(s, "authentication = \"internal_hashed\"");
        let _ = writeln!(s, "storage = \"internal\"");
        let _ = writeln!(s, "allow_registration = false");
        s.push_str(&c.extra_global);
        let _ = writeln!(s);
        let _ = writeln!(s, "VirtualHost {}", lua_str(&c.vhost));
        s.push_str(&c.extra_vhost);
        for comp in &c.components {
            let _ = writeln!(s);
            let _ = writeln!(s, "Component {}", lua_str(&comp.domain));
            let _ = writeln!(s, "    component_secret = {}", lua_str(&comp.secret));
            if let Some(r) = &comp.conflict_resolve {
                let _ = writeln!(s, "    component_conflict_resolve = {}", lua_str(r));
            }
        }
        fs::write(self.config_path(), s).map_err(|e| format!("write config: {e}"))
    }

    async fn launch(&mut self) -> Result<(), LaunchError> {
        let fatal = LaunchError::Fatal;
        let d = self.dir.path().to_path_buf();
        self.log_offset = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let stdout = fs::File::create(d.join("stdout.txt")).map_err(|e| fatal(format!("{e}")))?;
        let stderr = fs::File::create(d.join("stderr.txt")).map_err(|e| fatal(format!("{e}")))?;
        let started = Instant::now();
        let child = Command::new(PROSODY_BIN)
            .arg("--config")
            .arg(self.config_path())
            .arg("-F")
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                fatal(format!(
                    "cannot run {PROSODY_BIN}: {e} (apt-get install -y prosody)"
                ))
            })?;
        self.child = Some(child);

        let want_c2s = format!("Activated service 'c2s' on [127.0.0.1]:{}", self.c2s_port);
        let want_comp = format!(
            "Activated service 'component' on [127.0.0.1]:{}",
            self.component_port
        );
        let deadline = started + START_DEADLINE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(fatal(format!(
                    "prosody exited during startup ({status}); log tail:\n{}",
                    self.log_tail(30)
                )));
            }
            let log = self.current_run_log();
            if log.contains("Failed to open server port") {
                let msg = format!(
                    "prosody could not bind a port ({} / {}):\n{}",
                    self.c2s_port,
                    self.component_port,
                    tail(&log, 10)
                );
                let _ = self.stop().await;
                return Err(LaunchError::PortTaken(msg));
            }
            // Prosody opens the component port only if a Component is configured.
            let want_component = !self.config.components.is_empty();
            if log.contains(&want_c2s)
                && (!want_component || log.contains(&want_comp))
                && port_open(self.c2s_addr())
                && (!want_component || port_open(self.component_addr()))
            {
                self.startup = started.elapsed();
                return Ok(());
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "prosody did not serve 127.0.0.1:{} and 127.0.0.1:{} within {START_DEADLINE:?}; log tail:\n{}",
                    self.c2s_port,
                    self.component_port,
                    self.log_tail(30)
                );
                let _ = self.stop().await;
                return Err(fatal(msg));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn current_run_log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.log_path()) {
            if f.seek(SeekFrom::Start(self.log_offset)).is_ok() {
                let _ = f.read_to_string(&mut s);
            }
        }
        s
    }
}

impl Drop for Prosody {
    /// SIGKILL: the temp dir (data included) is removed right after, so a
    /// graceful shutdown (about 1 s with clients connected) buys nothing.
    /// Use [`Prosody::stop`] for an orderly shutdown.
    fn drop(&mut self) {
        self.kill();
    }
}

enum LaunchError {
    PortTaken(String),
    Fatal(String),
}

fn sigterm(pid: u32) {
    // No libc dependency: /usr/bin/kill (procps) is on every Debian.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Two distinct free loopback ports (bound then released, so another process
/// may still take them: `start` retries if Prosody cannot bind).
fn free_port_pair() -> Result<(u16, u16), String> {
    let a = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let b = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let pa = a.local_addr().map_err(|e| e.to_string())?.port();
    let pb = b.local_addr().map_err(|e| e.to_string())?.port();
    Ok((pa, pb))
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Prosody's datamanager path encoding: every byte outside [A-Za-z0-9]
/// becomes `%xx` (lower-case hex). `example.test` -> `example%2etest`.
pub fn prosody_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    out
}

/// A Lua string literal.
fn lua_str(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

/// The roster store file as Prosody 0.12's internal storage writes it
/// (`return { [false] = metadata; ["jid"] = item; ... };`).
fn roster_lua(items: &[(&str, Subscription)]) -> String {
    let mut s = String::from("return {\n");
    s.push_str("\t[false] = {\n\t\t[\"version\"] = 1;\n\t\t[\"pending\"] = {};\n\t};\n");
    for (jid, sub) in items {
        let _ = write!(
            s,
            "\t[{}] = {{\n\t\t[\"groups\"] = {{}};\n\t\t[\"subscription\"] = {};\n\t}};\n",
            lua_str(jid),
            lua_str(sub.as_str())
        );
    }
    s.push_str("};\n");
    s
}
