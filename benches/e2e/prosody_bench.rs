//! Prosody in the loop: the same requesters send iq gets (a) straight to
//! the target account's resources, the floor with no proxy, (b) to
//! jatproxy as Prosody's external component, which hands them to the
//! same resources, and (c) to Prosody's own `mod_client_proxy` loaded
//! in-process, what jatproxy replaces — so the server's CPU per request
//! is shown for all three side by side. Each path runs at 1, 16 and
//! 4×16 requests in flight: the tail latencies at low load are where a
//! Nagle / delayed-ACK stall shows. Prosody re-serialises stanzas, so
//! checks here are on id, addresses and payload, not whole bytes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::engine::{self, Class, End, Spec, Traffic};
use crate::prosody::{Prosody, ProsodyConfig, Subscription};
use crate::report::ProsodyRow;
use crate::setup::{self, Role, UPSTREAM_SECRET};
use crate::traffic::{parse_id, preview, target, Bodies, Size, D, T_USER, VHOST};
use crate::wire::{Conn, Elem, Read1, Unit};
use crate::{procstat, Settings};

const PW: &str = "bench-pw";
const REQUESTERS: usize = 4;
const RESPONDERS: usize = 2;
/// Requests in flight per requester.
const WINDOW: usize = 16;
const NS: &str = "urn:example:bench";
/// The component domain `mod_client_proxy` serves inside Prosody.
const MODULE_DOMAIN: &str = "module-proxy.example.test";
/// (requesters, requests in flight each) of the runs of every path: one
/// at a time, one requester's window, and all requesters' windows.
const LOADS: [(usize, usize); 3] = [(1, 1), (1, WINDOW), (REQUESTERS, WINDOW)];

struct Plan<'a> {
    tag: u32,
    /// The component domain requests go to (jatproxy's or the module's),
    /// or `None` straight to a resource.
    via: Option<&'static str>,
    bodies: &'a Bodies,
}

impl Plan<'_> {
    fn resource_for(seq: u64) -> String {
        format!("{}/r{}", target(), seq % RESPONDERS as u64)
    }

    fn seq_of(&self, st: &Elem) -> Result<u64, String> {
        match parse_id(st.id()) {
            Some((tag, seq)) if tag == self.tag => Ok(seq),
            _ => Err(format!("stanza not from this run: {}", preview(&st.bytes))),
        }
    }

    fn expect_body(&self, st: &Elem, seq: u64) -> Result<(), String> {
        let body = self.bodies.body(Size::Small, seq);
        if st.bytes.windows(body.len()).any(|w| w == body) {
            Ok(())
        } else {
            Err(format!(
                "payload of {seq} not intact: {}",
                preview(&st.bytes)
            ))
        }
    }
}

impl Traffic for Plan<'_> {
    fn request(&self, seq: u64, out: &mut Vec<u8>) {
        let to = match self.via {
            Some(domain) => domain.to_owned(),
            None => Self::resource_for(seq),
        };
        out.extend_from_slice(
            format!(
                "<iq type='get' id='{}.{seq}' to='{to}'><query xmlns='{NS}'>",
                self.tag
            )
            .as_bytes(),
        );
        out.extend_from_slice(self.bodies.body(Size::Small, seq));
        out.extend_from_slice(b"</query></iq>");
    }

    fn respond(&self, st: &Elem, out: &mut Vec<u8>) -> Result<(), String> {
        let seq = self.seq_of(st)?;
        self.expect_body(st, seq)?;
        let from = st.from().unwrap_or("");
        let from_ok = match self.via {
            Some(domain) => from.starts_with(&format!("{domain}/")),
            None => from.starts_with("req"),
        };
        if !from_ok {
            return Err(format!("request {seq} from {from:?}"));
        }
        out.extend_from_slice(
            format!(
                "<iq type='result' id='{}.{seq}' to='{from}'><query xmlns='{NS}'>",
                self.tag
            )
            .as_bytes(),
        );
        out.extend_from_slice(self.bodies.body(Size::Small, seq));
        out.extend_from_slice(b"</query></iq>");
        Ok(())
    }

    fn check_final(&self, st: &Elem) -> Result<u64, String> {
        let seq = self.seq_of(st)?;
        let want = match self.via {
            Some(domain) => domain.to_owned(),
            None => Self::resource_for(seq),
        };
        if st.from() != Some(want.as_str()) {
            return Err(format!("answer {seq} from {:?}, not {want}", st.from()));
        }
        self.expect_body(st, seq)?;
        Ok(seq)
    }

    fn classify(&self, st: &Elem) -> Result<Class, String> {
        match (st.name.as_str(), st.stanza_type()) {
            ("iq", Some("get")) => Ok(Class::Request),
            ("iq", Some("result")) => Ok(Class::Final),
            ("iq", _) => Err(format!("unexpected iq: {}", preview(&st.bytes))),
            _ => Ok(Class::Ignore),
        }
    }
}

/// Where `mod_client_proxy` is looked for at run time (it is never
/// copied into this repo): `$PROSODY_MODULES_DIR`, by default
/// `../shared/reference/prosody-modules` beside the repo root. `None`
/// (with the path tried) when the module file is not there.
fn module_dir() -> Result<PathBuf, PathBuf> {
    let dir = std::env::var_os("PROSODY_MODULES_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/prosody-modules"),
        PathBuf::from,
    );
    let file = dir.join("mod_client_proxy/mod_client_proxy.lua");
    if file.is_file() {
        Ok(dir)
    } else {
        Err(file)
    }
}

fn config(modules: Option<&PathBuf>) -> ProsodyConfig {
    let mut cfg = ProsodyConfig::new()
        .vhost(VHOST)
        .user(T_USER, PW)
        .component(D, UPSTREAM_SECRET)
        .roster_item(T_USER, D, Subscription::From)
        // Debug logging would make Prosody measure its log file; `info`
        // is per connection, and the start-up check reads it.
        .log_level("info");
    for i in 0..REQUESTERS {
        cfg = cfg.user(&format!("req{i}"), PW);
    }
    if std::env::var_os("E2E_PROSODY_NO_NAGLE").is_some() {
        // What the operator can set (README "Performance"): Prosody 0.12's
        // epoll backend then sets TCP_NODELAY on its sockets.
        cfg = cfg.extra_global("network_settings = { nagle = false }");
    }
    if let Some(dir) = modules {
        // The module learns the target's resources from their presence,
        // which Prosody sends it when the roster says `From`.
        cfg = cfg
            .roster_item(T_USER, MODULE_DOMAIN, Subscription::From)
            .extra_global(&format!("plugin_paths = {{ {:?} }}", dir.to_string_lossy()))
            .extra_vhost(&format!(
                "Component {MODULE_DOMAIN:?} \"client_proxy\"\n    target_address = {:?}",
                target()
            ));
    }
    cfg
}

pub fn run(s: &Settings, bodies: &Bodies) -> Result<Vec<ProsodyRow>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let modules = module_dir();
    let prosody = rt.block_on(Prosody::start(config(modules.as_ref().ok())))?;
    let result = measure(s, bodies, &prosody, modules.is_ok());
    drop(prosody);
    let mut rows = result?;
    if let Err(tried) = modules {
        rows.push(ProsodyRow::skipped(
            label(Some(MODULE_DOMAIN)),
            format!("skipped: mod_client_proxy not found at {}", tried.display()),
        ));
    }
    Ok(rows)
}

fn label(via: Option<&str>) -> String {
    match via {
        None => "requester → Prosody → resource (floor)".into(),
        Some(D) => "requester → Prosody → jatproxy → Prosody → resource".into(),
        Some(_) => "requester → Prosody (mod_client_proxy) → resource".into(),
    }
}

fn measure(
    s: &Settings,
    bodies: &Bodies,
    prosody: &Prosody,
    with_module: bool,
) -> Result<Vec<ProsodyRow>, String> {
    let c2s = prosody.c2s_addr();
    let ppid = prosody.pid().ok_or("prosody has no pid")?;
    let mut responders = (0..RESPONDERS)
        .map(|i| crate::c2s::login(c2s, T_USER, VHOST, PW, &format!("r{i}"), true))
        .collect::<Result<Vec<Conn>, String>>()?;
    let mut requesters = (0..REQUESTERS)
        .map(|i| crate::c2s::login(c2s, &format!("req{i}"), VHOST, PW, "q", false))
        .collect::<Result<Vec<Conn>, String>>()?;
    // jatproxy's worker threads here (E2E_PROSODY_THREADS, default 2):
    // at the rates Prosody allows, each stanza wakes a task, and the
    // thread count decides how many of those wakes cross threads.
    let threads = std::env::var("E2E_PROSODY_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let proxy = setup::start_jatproxy(prosody.component_addr(), &Role::Clients, threads, "", None)?;
    wait_ready(&mut requesters[0], &mut responders, D)?;
    let mut paths = vec![None, Some(D)];
    if with_module {
        wait_ready(&mut requesters[0], &mut responders, MODULE_DOMAIN)?;
        paths.push(Some(MODULE_DOMAIN));
    }
    let mut rows = Vec::new();
    let mut tag = 900u32;
    for &(nreq, window) in &LOADS {
        for &via in &paths {
            tag += 1;
            let plan = Plan { tag, via, bodies };
            let pids = Pids {
                prosody: ppid,
                proxy: (via == Some(D)).then(|| proxy.pid()),
            };
            let load = Load { nreq, window };
            rows.push(one_run(
                s,
                &plan,
                &pids,
                load,
                &mut requesters,
                &mut responders,
            )?);
        }
    }
    Ok(rows)
}

/// The processes whose CPU a run charges: Prosody always, jatproxy when
/// the path goes through it.
struct Pids {
    prosody: u32,
    proxy: Option<u32>,
}

#[derive(Clone, Copy)]
struct Load {
    /// How many of the requesters send.
    nreq: usize,
    /// Requests in flight per sending requester.
    window: usize,
}

fn one_run(
    s: &Settings,
    plan: &Plan<'_>,
    pids: &Pids,
    load: Load,
    requesters: &mut [Conn],
    responders: &mut [Conn],
) -> Result<ProsodyRow, String> {
    let spec = Spec {
        duration: s.prosody_run,
        warmup: s.prosody_run / 8,
        rate: None,
        window: load.window,
        window_bytes: 1 << 20,
        drain: Duration::from_secs(20),
    };
    let mut ends: Vec<End<'_>> = Vec::new();
    for (i, c) in requesters.iter_mut().take(load.nreq).enumerate() {
        ends.push(End {
            conn: c,
            sends: true,
            completes_for: Some(i),
        });
    }
    for c in responders.iter_mut() {
        ends.push(End {
            conn: c,
            sends: false,
            completes_for: None,
        });
    }
    let p0 = procstat::cpu_mark(pids.prosody)?;
    let j0 = pids.proxy.map(procstat::cpu_mark).transpose()?;
    let s0 = pids.proxy.map(procstat::switches).transpose()?;
    let out = engine::run(ends, plan, &spec).map_err(|e| {
        format!(
            "prosody {} ×{} in flight: {e}",
            label(plan.via),
            load.nreq * load.window
        )
    })?;
    let prosody_cpu = procstat::cpu_since(pids.prosody, &p0)?;
    let proxy_cpu = match (pids.proxy, j0) {
        (Some(pid), Some(mark)) => Some(procstat::cpu_since(pid, &mark)?),
        _ => None,
    };
    let proxy_switches = match (pids.proxy, s0) {
        (Some(pid), Some(mark)) => Some(procstat::switches(pid)?.since(mark)),
        _ => None,
    };
    Ok(ProsodyRow {
        label: label(plan.via),
        in_flight: load.nreq * load.window,
        skipped: None,
        requests: out.items,
        secs: out.elapsed.as_secs_f64(),
        latencies: out.latencies,
        prosody_cpu,
        proxy_cpu,
        proxy_switches,
        requester_cpu: out.sender_cpu,
        responder_cpu: out.responder_cpu,
    })
}

/// Waits until the proxy at `domain` (jatproxy or the module) is online
/// with both resources in its pool: sends pings through it until each
/// resource has answered one.
fn wait_ready(req: &mut Conn, responders: &mut [Conn], domain: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = vec![false; responders.len()];
    let mut k = 0u32;
    while answered.iter().any(|a| !a) {
        if Instant::now() > deadline {
            return Err(format!(
                "{domain} did not get both resources into its pool in 20 s"
            ));
        }
        k += 1;
        req.write_all(
            format!(
                "<iq type='get' id='ready.{k}' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>"
            )
            .as_bytes(),
        )?;
        let until = Instant::now() + Duration::from_secs(2);
        'wait: while Instant::now() < until {
            for (i, r) in responders.iter_mut().enumerate() {
                if let Read1::Unit(Unit::Stanza(s)) = r.read()? {
                    if s.name == "iq" && s.stanza_type() == Some("get") {
                        let from = s.from().unwrap_or("").to_owned();
                        let id = s.id().unwrap_or("").to_owned();
                        r.write_all(
                            format!("<iq type='result' id='{id}' to='{from}'/>").as_bytes(),
                        )?;
                        answered[i] = true;
                    }
                }
            }
            if let Read1::Unit(Unit::Stanza(s)) = req.read()? {
                if s.id() == Some(&format!("ready.{k}")) {
                    if s.stanza_type() != Some("result") {
                        // Not online yet (service-unavailable): try again.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    break 'wait;
                }
            }
        }
    }
    Ok(())
}
