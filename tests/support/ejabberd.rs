//! A private ejabberd 23.01 (Debian's package) on loopback for end-to-end
//! tests: its own config, spool and log directories in a temp dir, its own
//! Erlang node name and distribution port, s2s off, no TLS, and a hosts
//! file resolver only, so nothing leaves the machine (see rust-notes.md).
//!
//! ejabberd takes several connections for one component domain and
//! spreads stanzas over them, which is what the scale-out tests need.
//! [`Cluster`] runs two such nodes joined into one ejabberd cluster, with
//! their Erlang distribution on loopback only.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// How long ejabberd gets to open its ports.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub struct EjabberdConfig {
    users: Vec<(String, String)>,
    /// (component domain, secret)
    components: Vec<(String, String)>,
    /// (user, contact, subscription) written with `add_rosteritem`.
    roster: Vec<(String, String, String)>,
    /// (component domain, balancing type, component number) for
    /// ejabberd's `domain_balancing`.
    balancing: Vec<(String, String, usize)>,
    /// Set for a node of a [`Cluster`]: distribution through epmd.
    member: Option<Member>,
    /// Direct TLS on the component port (`tls: true`) with this
    /// `certfile:` (certificate and key in one PEM file).
    component_certfile: Option<PathBuf>,
}

/// How a cluster node takes part in Erlang distribution: a name of its
/// own, the cluster's private epmd (on loopback, on its own port) and the
/// cluster's cookie.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    epmd_port: u16,
    cookie: String,
}

impl EjabberdConfig {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }
    pub fn component(mut self, domain: &str, secret: &str) -> Self {
        self.components.push((domain.into(), secret.into()));
        self
    }
    /// Direct TLS on the component port with `certfile` (one PEM holding
    /// the certificate and its key). ejabberd stops if it cannot read it,
    /// although `ejabberdctl start` returns 0: the port never opens.
    pub fn component_tls(mut self, certfile: &Path) -> Self {
        self.component_certfile = Some(certfile.to_owned());
        self
    }
    /// A roster item of `user` for `contact` with `subscription`
    /// (`none`, `to`, `from`, `both`).
    pub fn roster_item(mut self, user: &str, contact: &str, subscription: &str) -> Self {
        self.roster
            .push((user.into(), contact.into(), subscription.into()));
        self
    }
    /// ejabberd's `domain_balancing` for `domain`: with `random`, a stanza
    /// goes to any of the domain's connections in the cluster; without
    /// it, ejabberd prefers the connections on the node it entered.
    /// ejabberd 23.01 requires `component_number` with it: without, every
    /// component connection for the domain crashes at registration
    /// (`{badkey,component_number}` in `ejabberd_router`).
    pub fn domain_balancing(mut self, domain: &str, kind: &str, components: usize) -> Self {
        self.balancing
            .push((domain.into(), kind.into(), components));
        self
    }
}

pub struct Ejabberd {
    dir: tempfile::TempDir,
    c2s_port: u16,
    component_port: u16,
    /// ejabberd_http with mod_http_api, loopback only: provisioning and
    /// stopping take ~0.1 s this way, against 5–15 s per ejabberdctl run.
    api_port: u16,
    running: bool,
    /// The Erlang node name ejabberdctl talks to.
    node: String,
    member: Option<Member>,
}

pub const VHOST: &str = "example.test";

impl Ejabberd {
    /// Writes the config, starts the node, waits for both ports, then
    /// registers users and writes roster items.
    pub async fn start(config: EjabberdConfig) -> Result<Ejabberd, String> {
        let mut e = Self::prepare(&config)?;
        e.boot().await?;
        e.provision(&config)?;
        Ok(e)
    }

    /// The node's directories and config, not started yet.
    fn prepare(config: &EjabberdConfig) -> Result<Ejabberd, String> {
        which("ejabberdctl")?;
        let dir = tempfile::Builder::new()
            .prefix("ejabberd-test-")
            .tempdir()
            .map_err(|e| format!("cannot create temp dir: {e}"))?;
        let ports = free_ports(4)?;
        // The node name must be unique per test run: ejabberdctl talks to
        // the node by name.
        let node = match &config.member {
            Some(m) => m.name.clone(),
            None => format!("jattest{}@localhost", ports[0]),
        };
        let e = Ejabberd {
            dir,
            c2s_port: ports[0],
            component_port: ports[1],
            api_port: ports[3],
            running: false,
            node,
            member: config.member.clone(),
        };
        for sub in ["conf", "spool", "logs"] {
            std::fs::create_dir_all(e.dir.path().join(sub)).map_err(|x| x.to_string())?;
        }
        e.write_config(config, ports[2])?;
        Ok(e)
    }

    /// `ejabberdctl start`, then waits until its three ports are open.
    async fn boot(&mut self) -> Result<(), String> {
        let out = self.ctl(&["start"])?;
        if !out.status.success() {
            return Err(format!(
                "ejabberdctl start failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            ));
        }
        self.running = true;
        self.wait_ports().await
    }

    async fn wait_ports(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        while !(port_open(self.c2s_addr())
            && port_open(self.component_addr())
            && port_open(self.api_addr()))
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "ejabberd did not open its ports within {START_DEADLINE:?}:\n{}",
                    self.log_tail(40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Registers the users and writes the roster items of `config`.
    fn provision(&self, config: &EjabberdConfig) -> Result<(), String> {
        for (user, pw) in &config.users {
            self.api(
                "register",
                &format!(r#"{{"user":"{user}","host":"{VHOST}","password":"{pw}"}}"#),
            )?;
        }
        for (user, contact, sub) in &config.roster {
            // A contact that is a bare domain (a component) has no user.
            let (cu, cs) = contact.split_once('@').unwrap_or(("", contact));
            self.api(
                "add_rosteritem",
                &format!(
                    r#"{{"localuser":"{user}","localhost":"{VHOST}","user":"{cu}","server":"{cs}","nick":"{contact}","group":"","subs":"{sub}"}}"#
                ),
            )?;
        }
        Ok(())
    }

    /// Starts a stopped node again, with its spool as it was (a cluster
    /// node rejoins its cluster), and waits for its ports.
    pub async fn restart(&mut self) -> Result<(), String> {
        if self.running {
            return Ok(());
        }
        self.wait_unregistered().await?;
        self.boot().await
    }

    /// For a cluster node: waits until its stopped VM is gone from epmd
    /// (it closes its ports before it exits, and `ejabberdctl start`
    /// refuses a name epmd still lists).
    async fn wait_unregistered(&self) -> Result<(), String> {
        let Some(m) = &self.member else {
            return Ok(());
        };
        let short = self.node.split('@').next().unwrap_or_default();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let names = Command::new("epmd")
                .args(["-port", &m.epmd_port.to_string(), "-names"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run epmd -names: {e}"))?;
            let listed = String::from_utf8_lossy(&names.stdout)
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(short));
            if !listed {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} is still registered in epmd", self.node));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Erlang node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn write_config(&self, config: &EjabberdConfig, dist_port: u16) -> Result<(), String> {
        let conf = self.dir.path().join("conf");
        std::fs::write(conf.join("ejabberdctl.cfg"), self.ctl_config(dist_port))
            .map_err(|e| e.to_string())?;
        // Resolve from the hosts file only: never a DNS query.
        std::fs::write(
            conf.join("inetrc"),
            "{lookup,[\"file\"]}.\n{host,{127,0,0,1}, [\"localhost\"]}.\n",
        )
        .map_err(|e| e.to_string())?;
        let mut y = String::new();
        let level = std::env::var("EJABBERD_LOGLEVEL").unwrap_or_else(|_| "info".into());
        let _ = writeln!(y, "hosts:\n  - {VHOST}\nloglevel: {level}");
        let _ = writeln!(y, "listen:");
        let _ = writeln!(
            y,
            "  -\n    port: {}\n    ip: \"127.0.0.1\"\n    module: ejabberd_c2s\n    \
             starttls_required: false\n    backlog: 1024",
            self.c2s_port
        );
        let _ = writeln!(
            y,
            "  -\n    port: {}\n    ip: \"127.0.0.1\"\n    module: ejabberd_service\n    \
             backlog: 1024",
            self.component_port
        );
        if let Some(certfile) = &config.component_certfile {
            let _ = writeln!(y, "    tls: true\n    certfile: \"{}\"", certfile.display());
        }
        let _ = writeln!(y, "    hosts:");
        for (domain, secret) in &config.components {
            let _ = writeln!(y, "      \"{domain}\":\n        password: \"{secret}\"");
        }
        let _ = writeln!(
            y,
            "  -\n    port: {}\n    ip: \"127.0.0.1\"\n    module: ejabberd_http\n    \
             request_handlers:\n      \"/api\": mod_http_api\n\
             api_permissions:\n  \"loopback\":\n    from:\n      - mod_http_api\n    \
             who:\n      ip: 127.0.0.1/8\n    what: \"*\"",
            self.api_port
        );
        let _ = writeln!(
            y,
            "s2s_access: none\nacme:\n  auto: false\nauth_method: internal\n\
             shaper_rules:\n  c2s_shaper: none\n  max_user_sessions: 100\n\
             acl:\n  local:\n    user_regexp: \"\"\n\
             access_rules:\n  local:\n    allow: local\n  c2s:\n    allow: all\n\
             modules:\n  mod_roster: {{}}\n  mod_admin_extra: {{}}\n  mod_disco: {{}}\n  mod_ping: {{}}"
        );
        if !config.balancing.is_empty() {
            let _ = writeln!(y, "domain_balancing:");
            for (domain, kind, n) in &config.balancing {
                let _ = writeln!(
                    y,
                    "  \"{domain}\":\n    type: {kind}\n    component_number: {n}"
                );
            }
        }
        std::fs::write(conf.join("ejabberd.yml"), y).map_err(|e| e.to_string())
    }

    /// `ejabberdctl.cfg`. A lone node needs no epmd: it listens on
    /// `dist_port` and ejabberdctl finds it there. A cluster node uses the
    /// cluster's epmd (its peers must find each other by name) and the
    /// cluster's cookie, and listens on a port of the system's choosing
    /// (a fixed one would clash with ejabberdctl's own short-lived node,
    /// which takes the same options); its distribution listener is bound
    /// to 127.0.0.1 either way.
    fn ctl_config(&self, dist_port: u16) -> String {
        let common = format!(
            "EXEC_CMD=as_current_user\nERLANG_NODE={}\nINET_DIST_INTERFACE=127.0.0.1\n\
             EJABBERD_PID_PATH={}\n",
            self.node,
            self.pid_path().display()
        );
        match &self.member {
            None => format!(
                "{common}ERL_DIST_PORT={dist_port}\n\
                 ERL_OPTIONS=\"-kernel inet_dist_use_interface {{127,0,0,1}}\"\n"
            ),
            Some(m) => format!(
                "{common}export ERL_EPMD_PORT={}\nERL_EPMD_ADDRESS=127.0.0.1\n\
                 ERL_OPTIONS=\"-kernel inet_dist_use_interface {{127,0,0,1}} -setcookie {}\"\n",
                m.epmd_port, m.cookie
            ),
        }
    }

    fn ctl(&self, args: &[&str]) -> Result<Output, String> {
        let d = self.dir.path();
        Command::new("ejabberdctl")
            .arg("--config-dir")
            .arg(d.join("conf"))
            .arg("--spool")
            .arg(d.join("spool"))
            .arg("--logs")
            .arg(d.join("logs"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ejabberdctl: {e}"))
    }

    /// Calls an ejabberd command through mod_http_api (HTTP/1.1 POST with
    /// a JSON body, connection closed after the answer).
    fn api(&self, command: &str, json: &str) -> Result<String, String> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect_timeout(&self.api_addr(), Duration::from_secs(5))
            .map_err(|e| format!("ejabberd API: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let req = format!(
            "POST /api/{command} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("ejabberd API {command}: {e}"))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .map_err(|e| format!("ejabberd API {command}: {e}"))?;
        if answer.starts_with("HTTP/1.1 200") {
            Ok(answer)
        } else {
            Err(format!("ejabberd API {command} {json}: {answer}"))
        }
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.path().join("ejabberd.pid")
    }

    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.api_port))
    }

    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.c2s_port))
    }

    pub fn component_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.component_port))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("logs").join("ejabberd.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Asks the node to stop (the `stop` command) and returns at once, so
    /// a test can stop a node in the middle of a load; [`Ejabberd::stop`]
    /// then waits until it is gone.
    pub fn begin_stop(&self) {
        let _ = self.api("stop", "{}");
    }

    /// Stops the node (the `stop` command, SIGKILL to its pid if it is
    /// still there after 10 s) and waits until its ports are closed.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        self.begin_stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while port_open(self.c2s_addr()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if port_open(self.c2s_addr()) {
            if let Ok(pid) = std::fs::read_to_string(self.pid_path()) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
            }
        }
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("KEEP_EJABBERD_DIR").is_some() {
            eprintln!("ejabberd dir kept: {}", self.dir.path().display());
            let dir = std::mem::replace(
                &mut self.dir,
                match tempfile::tempdir() {
                    Ok(d) => d,
                    Err(_) => return,
                },
            );
            let _ = dir.keep();
        }
    }
}

/// Two ejabberd nodes on loopback joined into one cluster: each with its
/// own node name, spool, logs and ports; one cookie; a private epmd on
/// its own port bound to 127.0.0.1 (so no test meets another epmd), and
/// every node's distribution listener on 127.0.0.1 only. The second node
/// joins the first with `ejabberdctl join_cluster`; users are registered
/// once the cluster stands (the join replaces the joining node's
/// database with the cluster's).
pub struct Cluster {
    /// Both nodes, the one joined first.
    pub nodes: Vec<Ejabberd>,
    epmd: std::process::Child,
}

impl Cluster {
    /// Starts epmd and both nodes with `config` (each its own ports),
    /// joins them and waits until both list both in `list_cluster`.
    pub async fn start(config: EjabberdConfig) -> Result<Cluster, String> {
        which("ejabberdctl")?;
        which("epmd")?;
        let epmd_port = free_ports(1)?[0];
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run epmd: {e}"))?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            epmd,
        };
        cluster.wait_epmd(epmd_port).await?;
        for k in 1..=2 {
            let mut node_config = config.clone();
            node_config.member = Some(Member {
                name: format!("jatnode{k}p{epmd_port}@localhost"),
                epmd_port,
                cookie: format!("jatcluster{epmd_port}"),
            });
            cluster.nodes.push(Ejabberd::prepare(&node_config)?);
            let node = cluster.nodes.last_mut().ok_or("no node")?;
            node.boot().await?;
        }
        cluster.join().await?;
        cluster.nodes[0].provision(&config)?;
        Ok(cluster)
    }

    /// Waits until the private epmd answers `-names`.
    async fn wait_epmd(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let names = Command::new("epmd")
                .args(["-port", &port.to_string(), "-names"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run epmd -names: {e}"))?;
            if names.status.success() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.epmd.try_wait() {
                return Err(format!("epmd on port {port} exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("epmd on port {port} never answered"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `ejabberdctl join_cluster` on the second node, then waits until
    /// each node's `list_cluster` names both and the second node (which
    /// restarts ejabberd to join) has its ports open again.
    async fn join(&mut self) -> Result<(), String> {
        let first = self.nodes[0].node().to_owned();
        let out = self.nodes[1].ctl(&["join_cluster", &first])?;
        if !out.status.success() {
            return Err(format!(
                "join_cluster {first} failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.nodes[1].log_tail(40)
            ));
        }
        self.nodes[1].wait_ports().await?;
        let names: Vec<String> = self.nodes.iter().map(|n| n.node().to_owned()).collect();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let listed: Vec<Result<String, String>> = self
                .nodes
                .iter()
                .map(|n| n.api("list_cluster", "{}"))
                .collect();
            let all = listed.iter().all(|l| {
                l.as_ref()
                    .is_ok_and(|l| names.iter().all(|n| l.contains(n)))
            });
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the nodes never listed each other: {listed:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes first: epmd outlives its last node.
        self.nodes.clear();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

fn which(program: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(format!(
            "{program} not found on PATH: install Debian's ejabberd (scripts/setup.sh does)"
        ))
    }
}

fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// `n` distinct free loopback ports (bound together, then released).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}")))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}
