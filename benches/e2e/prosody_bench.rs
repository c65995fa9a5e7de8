//! Prosody in the loop: the same requesters send iq gets (a) straight to
//! the target account's resources, the floor with no proxy, and (b) to
//! jatproxy as Prosody's external component, which hands them to the
//! same resources. Prosody re-serialises stanzas, so checks here are on
//! id, addresses and payload, not whole bytes.

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

struct Plan<'a> {
    tag: u32,
    /// Through jatproxy (`to` = the domain) or straight to a resource.
    via_proxy: bool,
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
        let to = if self.via_proxy {
            D.to_owned()
        } else {
            Self::resource_for(seq)
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
        let from_ok = if self.via_proxy {
            from.starts_with(&format!("{D}/"))
        } else {
            from.starts_with("req")
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
        let want = if self.via_proxy {
            D.to_owned()
        } else {
            Self::resource_for(seq)
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

pub fn run(s: &Settings, bodies: &Bodies) -> Result<Vec<ProsodyRow>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
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
    let prosody = rt.block_on(Prosody::start(cfg))?;
    let result = measure(s, bodies, &prosody);
    drop(prosody);
    result
}

fn measure(s: &Settings, bodies: &Bodies, prosody: &Prosody) -> Result<Vec<ProsodyRow>, String> {
    let c2s = prosody.c2s_addr();
    let ppid = prosody.pid().ok_or("prosody has no pid")?;
    let mut responders = (0..RESPONDERS)
        .map(|i| crate::c2s::login(c2s, T_USER, VHOST, PW, &format!("r{i}"), true))
        .collect::<Result<Vec<Conn>, String>>()?;
    let mut requesters = (0..REQUESTERS)
        .map(|i| crate::c2s::login(c2s, &format!("req{i}"), VHOST, PW, "q", false))
        .collect::<Result<Vec<Conn>, String>>()?;

    let spec = Spec {
        duration: s.prosody_run,
        warmup: s.prosody_run / 8,
        rate: None,
        window: WINDOW,
        window_bytes: 1 << 20,
        drain: Duration::from_secs(20),
    };
    let mut rows = Vec::new();
    // jatproxy's worker threads here (E2E_PROSODY_THREADS, default 2):
    // at the rates Prosody allows, each stanza wakes a task, and the
    // thread count decides how many of those wakes cross threads.
    let threads = std::env::var("E2E_PROSODY_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let proxy = setup::start_jatproxy(prosody.component_addr(), &Role::Clients, threads, "", None)?;
    wait_ready(&mut requesters[0], &mut responders)?;
    for (tag, via_proxy) in [(900u32, false), (901, true)] {
        let plan = Plan {
            tag,
            via_proxy,
            bodies,
        };
        let mut ends: Vec<End<'_>> = Vec::new();
        for (i, c) in requesters.iter_mut().enumerate() {
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
        let p0 = procstat::cpu_mark(ppid)?;
        let j0 = procstat::cpu_mark(proxy.pid())?;
        let out = engine::run(ends, &plan, &spec).map_err(|e| {
            format!(
                "prosody {}: {e}",
                if via_proxy { "via jatproxy" } else { "direct" }
            )
        })?;
        let p1 = procstat::cpu_since(ppid, &p0)?;
        let j1 = procstat::cpu_since(proxy.pid(), &j0)?;
        rows.push(ProsodyRow {
            label: if via_proxy {
                "requester → Prosody → jatproxy → Prosody → resource".into()
            } else {
                "requester → Prosody → resource (floor)".into()
            },
            requests: out.items,
            secs: out.elapsed.as_secs_f64(),
            latencies: out.latencies,
            prosody_cpu: p1,
            proxy_cpu: via_proxy.then_some(j1),
            requester_cpu: out.sender_cpu,
            responder_cpu: out.responder_cpu,
        });
    }
    Ok(rows)
}

/// Waits until jatproxy is online with both resources in its pool: sends
/// pings through it until each resource has answered one.
fn wait_ready(req: &mut Conn, responders: &mut [Conn]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = vec![false; responders.len()];
    let mut k = 0u32;
    while answered.iter().any(|a| !a) {
        if Instant::now() > deadline {
            return Err("jatproxy did not get both resources into its pool in 20 s".into());
        }
        k += 1;
        req.write_all(
            format!("<iq type='get' id='ready.{k}' to='{D}'><ping xmlns='urn:xmpp:ping'/></iq>")
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
