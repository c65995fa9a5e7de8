//! A private ejabberd 23.01 (Debian's package) on loopback for end-to-end
//! tests: its own config, spool and log directories in a temp dir, its own
//! Erlang node name and distribution port, s2s off, no TLS, and a hosts
//! file resolver only, so nothing leaves the machine (see rust-notes.md).
//!
//! ejabberd takes several connections for one component domain and
//! spreads stanzas over them, which is what the scale-out tests need.

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
    /// Direct TLS on the component port (`tls: true`) with this
    /// `certfile:` (certificate and key in one PEM file).
    component_certfile: Option<PathBuf>,
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
}

pub struct Ejabberd {
    dir: tempfile::TempDir,
    c2s_port: u16,
    component_port: u16,
    /// ejabberd_http with mod_http_api, loopback only: provisioning and
    /// stopping take ~0.1 s this way, against 5–15 s per ejabberdctl run.
    api_port: u16,
    running: bool,
}

pub const VHOST: &str = "example.test";

impl Ejabberd {
    /// Writes the config, starts the node, waits for both ports, then
    /// registers users and writes roster items.
    pub async fn start(config: EjabberdConfig) -> Result<Ejabberd, String> {
        which("ejabberdctl")?;
        let dir = tempfile::Builder::new()
            .prefix("ejabberd-test-")
            .tempdir()
            .map_err(|e| format!("cannot create temp dir: {e}"))?;
        let ports = free_ports(4)?;
        let e = Ejabberd {
            dir,
            c2s_port: ports[0],
            component_port: ports[1],
            api_port: ports[3],
            running: false,
        };
        for sub in ["conf", "spool", "logs"] {
            std::fs::create_dir_all(e.dir.path().join(sub)).map_err(|x| x.to_string())?;
        }
        e.write_config(&config, ports[2])?;
        let mut e = e;
        let out = e.ctl(&["start"])?;
        if !out.status.success() {
            return Err(format!(
                "ejabberdctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                e.log_tail(40)
            ));
        }
        e.running = true;
        let deadline = Instant::now() + START_DEADLINE;
        while !(port_open(e.c2s_addr()) && port_open(e.component_addr()) && port_open(e.api_addr()))
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "ejabberd did not open its ports within {START_DEADLINE:?}:\n{}",
                    e.log_tail(40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (user, pw) in &config.users {
            e.api(
                "register",
                &format!(r#"{{"user":"{user}","host":"{VHOST}","password":"{pw}"}}"#),
            )?;
        }
        for (user, contact, sub) in &config.roster {
            // A contact that is a bare domain (a component) has no user.
            let (cu, cs) = contact.split_once('@').unwrap_or(("", contact));
            e.api(
                "add_rosteritem",
                &format!(
                    r#"{{"localuser":"{user}","localhost":"{VHOST}","user":"{cu}","server":"{cs}","nick":"{contact}","group":"","subs":"{sub}"}}"#
                ),
            )?;
        }
        Ok(e)
    }

    fn write_config(&self, config: &EjabberdConfig, dist_port: u16) -> Result<(), String> {
        let conf = self.dir.path().join("conf");
        // The node name must be unique per test run: ejabberdctl talks to
        // the node by name.
        let node = format!("jattest{}@localhost", self.c2s_port);
        let ctl = format!(
            "EXEC_CMD=as_current_user\nERLANG_NODE={node}\nERL_DIST_PORT={dist_port}\n\
             ERL_OPTIONS=\"-kernel inet_dist_use_interface {{127,0,0,1}}\"\n\
             INET_DIST_INTERFACE=127.0.0.1\nEJABBERD_PID_PATH={}\n",
            self.pid_path().display()
        );
        std::fs::write(conf.join("ejabberdctl.cfg"), ctl).map_err(|e| e.to_string())?;
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
        std::fs::write(conf.join("ejabberd.yml"), y).map_err(|e| e.to_string())
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

    /// Stops the node (the `stop` command, SIGKILL to its pid if it is
    /// still there after 10 s) and waits until its ports are closed.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let _ = self.api("stop", "{}");
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
