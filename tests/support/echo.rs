//! A real component instance as a child process: `echo_component.py`
//! (slixmpp's `ComponentXMPP`) connected to jatproxy's instance listener.
//!
//! A separate program because tokio-xmpp's `component` feature cannot be
//! built together with the c2s `Client` the tests use (see rust-notes).
//! Its stdout lines (`READY`, `REQ id`, `ANS id`, `pong …`) are the test's
//! view of what the instance did; stdout and stderr are kept for failure
//! messages. Dropping it kills the process (SIGKILL).
//!
//! Needs `python3` with slixmpp (`scripts/setup.sh`); without them
//! [`EchoComponent::start`] fails, and so does the test.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

/// The component program, next to this file.
pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/echo_component.py"
);

/// The interpreter: `$PYTHON` or `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

pub struct EchoComponent {
    pub name: String,
    child: Option<Child>,
    /// Every line of stdout and stderr so far, tagged, in arrival order.
    output: Arc<Mutex<Vec<String>>>,
    /// Stdout lines not yet taken, with when they were read.
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
    /// Stdout lines taken so far.
    taken: Vec<String>,
    /// When each line in `taken` was read from the pipe.
    at: Vec<Instant>,
}

impl EchoComponent {
    /// Starts an instance `name` of `domain` against jatproxy's listener
    /// and waits for its `READY` line (the handshake was accepted).
    pub async fn start(
        listener: SocketAddr,
        domain: &str,
        secret: &str,
        name: &str,
        wait: Duration,
    ) -> Result<EchoComponent, String> {
        Self::start_with(listener, domain, secret, name, &[], wait).await
    }

    /// [`EchoComponent::start`] with extra arguments for the program:
    /// `--refuse CONDITION` (every echo request answered with that error)
    /// or `--silent` (never answered).
    pub async fn start_with(
        listener: SocketAddr,
        domain: &str,
        secret: &str,
        name: &str,
        extra: &[&str],
        wait: Duration,
    ) -> Result<EchoComponent, String> {
        let mut child = Command::new(python())
            .arg(SCRIPT)
            .args(["--host", &listener.ip().to_string()])
            .args(["--port", &listener.port().to_string()])
            .args(["--domain", domain, "--secret", secret, "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {} {SCRIPT}: {e}", python()))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    output.lock().expect("lock").push(format!("out| {line}"));
                    let _ = tx.send((Instant::now(), line));
                }
            });
        }
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    output.lock().expect("lock").push(format!("err| {line}"));
                }
            });
        }
        let mut c = EchoComponent {
            name: name.to_owned(),
            child: Some(child),
            output,
            lines,
            taken: Vec::new(),
            at: Vec::new(),
        };
        c.wait_line(wait, |l| l.starts_with("READY"))
            .await
            .map_err(|e| {
                format!(
                "instance {name} did not come up (is slixmpp installed? run scripts/setup.sh): {e}"
            )
            })?;
        Ok(c)
    }

    /// The next stdout line for which `pred` holds (earlier ones are
    /// skipped, but kept in [`EchoComponent::taken`]).
    pub async fn wait_line(
        &mut self,
        wait: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + wait;
        loop {
            match timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((t, l))) => {
                    self.taken.push(l.clone());
                    self.at.push(t);
                    if pred(&l) {
                        return Ok(l);
                    }
                }
                Ok(None) => {
                    let status = self.exit_status();
                    return Err(format!(
                        "instance {} ended ({status:?}); output:\n{}",
                        self.name,
                        self.output()
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "no matching line from instance {} within {wait:?}; output:\n{}",
                        self.name,
                        self.output()
                    ))
                }
            }
        }
    }

    /// Every stdout line received so far, without waiting.
    pub fn lines_so_far(&mut self) -> &[String] {
        while let Ok((t, l)) = self.lines.try_recv() {
            self.taken.push(l);
            self.at.push(t);
        }
        &self.taken
    }

    /// Request ids this instance announced (`REQ`) less than `fresh` ago
    /// and has not answered (`ANS`) so far. With answers delayed well
    /// beyond `fresh`, these are certainly still in flight on it.
    pub fn holding(&mut self, fresh: Duration) -> Vec<String> {
        self.lines_so_far();
        let now = Instant::now();
        let mut open: Vec<(String, Instant)> = Vec::new();
        for (l, t) in self.taken.iter().zip(&self.at) {
            if let Some(id) = l.strip_prefix("REQ ") {
                open.push((id.to_owned(), *t));
            } else if let Some(id) = l.strip_prefix("ANS ") {
                open.retain(|(x, _)| x != id);
            }
        }
        open.into_iter()
            .filter(|(_, t)| now.duration_since(*t) < fresh)
            .map(|(id, _)| id)
            .collect()
    }

    /// Everything it printed, for failure messages.
    pub fn output(&self) -> String {
        self.output.lock().expect("lock").join("\n")
    }

    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: the kernel closes its socket, no stream end is sent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EchoComponent {
    fn drop(&mut self) {
        self.kill();
    }
}
