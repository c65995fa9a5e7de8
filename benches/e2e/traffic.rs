//! What the load generator sends and what each side must receive, byte for
//! byte where the path is a component stream.
//!
//! Every stanza carries `id='TAG.SEQ'`: the run tag rejects stragglers from
//! an earlier run, the sequence number finds the send time and catches
//! losses and duplicates. Payloads are fixed texts per size class, so a
//! receiver can check a stanza against the exact bytes it must be.

/// The component domain jatproxy serves.
pub const D: &str = "proxy.example.test";
/// The account whose resources serve the seed flow.
pub const T_USER: &str = "target";
pub const VHOST: &str = "example.test";
/// Payload namespace of the iqs.
const NS: &str = "urn:example:bench";
/// Distinct requesters (`from`) the component-side flows cycle through.
const REQUESTERS: u64 = 50;
/// Payload variants per size class.
const VARIANTS: usize = 8;

pub fn target() -> String {
    format!("{T_USER}@{VHOST}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Messages from the server side to an instance, forwarded unchanged.
    Pass,
    /// The client-proxy seed flow: iq get in (rewritten), result back
    /// (rewritten).
    Seed,
}

impl Flow {
    pub fn name(self) -> &'static str {
        match self {
            Flow::Pass => "pass",
            Flow::Seed => "seed",
        }
    }

    /// Stanzas the path under test forwards per request: a message once;
    /// an iq and its result, once each.
    pub fn stanzas_per_item(self) -> u64 {
        match self {
            Flow::Pass => 1,
            Flow::Seed => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// ~200 B stanzas.
    Small,
    /// By count 70 % ~200 B, 25 % ~1 KiB, 5 % ~16 KiB.
    Mixed,
    /// 64 KiB stanzas.
    Large,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Mixed => "mixed",
            Size::Large => "64KiB",
        }
    }
}

/// Where the stanzas go, which decides what the far side sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The plain TCP relay: bytes arrive as sent.
    Relay,
    /// jatproxy: the seed flow's iqs are rewritten.
    Proxy,
}

/// Payload texts: ASCII words, an entity and multi-byte UTF-8, none of
/// which a re-serialising server would write differently.
pub struct Bodies {
    /// [class][variant]; classes: 0 small, 1 ~1 KiB, 2 ~16 KiB, 3 64 KiB.
    texts: Vec<Vec<Vec<u8>>>,
}

/// Body bytes per class, chosen so that whole stanzas come out near the
/// nominal sizes (the envelope is ~110 bytes).
const CLASS_BYTES: [usize; 4] = [90, 910, 16_270, 65_420];

impl Bodies {
    pub fn new() -> Bodies {
        const WORDS: &[&str] = &[
            "hello",
            "proxy",
            "stanza",
            "&amp;",
            "café",
            "component",
            "日本語",
            "route",
            "x",
            "jabber",
            "Grüße",
            "load",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let texts = CLASS_BYTES
            .iter()
            .map(|&len| {
                (0..VARIANTS)
                    .map(|_| {
                        let mut s = String::with_capacity(len + 16);
                        while s.len() < len {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            s.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
                            s.push(' ');
                        }
                        s.into_bytes()
                    })
                    .collect()
            })
            .collect();
        Bodies { texts }
    }

    pub fn body(&self, size: Size, seq: u64) -> &[u8] {
        let class = match size {
            Size::Small => 0,
            Size::Large => 3,
            Size::Mixed => match (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100 {
                0..=69 => 0,
                70..=94 => 1,
                _ => 2,
            },
        };
        &self.texts[class][(seq % VARIANTS as u64) as usize]
    }
}

/// `TAG.SEQ` back into its parts.
pub fn parse_id(id: Option<&str>) -> Option<(u32, u64)> {
    let (tag, seq) = id?.split_once('.')?;
    Some((tag.parse().ok()?, seq.parse().ok()?))
}

/// The requester of a component-side request.
pub fn requester(seq: u64) -> String {
    format!("u{}@{VHOST}/r", seq % REQUESTERS)
}

/// One run's traffic on a component stream (relay or jatproxy).
pub struct Plan<'a> {
    pub tag: u32,
    pub flow: Flow,
    pub size: Size,
    pub path: Path,
    pub bodies: &'a Bodies,
}

impl Plan<'_> {
    /// What the sending side writes for request `seq`.
    pub fn request(&self, seq: u64, out: &mut Vec<u8>) {
        let (tag, d, f) = (self.tag, D, requester(seq));
        let body = self.bodies.body(self.size, seq);
        match self.flow {
            Flow::Pass => {
                out.extend_from_slice(
                    format!("<message to='{d}' from='{f}' id='{tag}.{seq}' type='chat'><body>")
                        .as_bytes(),
                );
                out.extend_from_slice(body);
                out.extend_from_slice(b"</body></message>");
            }
            Flow::Seed => {
                out.extend_from_slice(
                    format!(
                        "<iq type='get' id='{tag}.{seq}' to='{d}' from='{f}'><query xmlns='{NS}'>"
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(body);
                out.extend_from_slice(b"</query></iq>");
            }
        }
    }

    /// Checks a request as the responding member receives it and writes
    /// the member's reply: the same payload, `to` and `from` swapped.
    pub fn respond(&self, st: &crate::wire::Elem, out: &mut Vec<u8>) -> Result<(), String> {
        let seq = self.seq_of(st)?;
        let f = requester(seq);
        let (to, from) = (st.to().unwrap_or(""), st.from().unwrap_or(""));
        let ok = match self.path {
            Path::Relay => to == D && from == f,
            Path::Proxy => {
                from.strip_prefix(D).and_then(|r| r.strip_prefix('/')) == Some(f.as_str())
                    && to
                        .strip_prefix(&target())
                        .is_some_and(|r| r.starts_with("/m"))
            }
        };
        if !ok {
            return Err(format!(
                "request {seq} arrived with to={to:?} from={from:?}"
            ));
        }
        let body = self.bodies.body(self.size, seq);
        let head = format!(
            "<iq type='get' id='{}.{seq}' to='{to}' from='{from}'><query xmlns='{NS}'>",
            self.tag
        );
        expect_parts(&st.bytes, &[head.as_bytes(), body, b"</query></iq>"], seq)?;
        out.extend_from_slice(
            format!(
                "<iq type='result' id='{}.{seq}' to='{from}' from='{to}'><query xmlns='{NS}'>",
                self.tag
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
        out.extend_from_slice(b"</query></iq>");
        Ok(())
    }

    /// Checks what the far end of a request must receive, byte for byte;
    /// returns its sequence number.
    pub fn check_final(&self, st: &crate::wire::Elem) -> Result<u64, String> {
        let seq = self.seq_of(st)?;
        let body = self.bodies.body(self.size, seq);
        let (tag, f) = (self.tag, requester(seq));
        match self.flow {
            Flow::Pass => {
                let head =
                    format!("<message to='{D}' from='{f}' id='{tag}.{seq}' type='chat'><body>");
                expect_parts(
                    &st.bytes,
                    &[head.as_bytes(), body, b"</body></message>"],
                    seq,
                )?;
            }
            Flow::Seed => {
                let head = format!(
                    "<iq type='result' id='{tag}.{seq}' to='{f}' from='{D}'><query xmlns='{NS}'>"
                );
                expect_parts(&st.bytes, &[head.as_bytes(), body, b"</query></iq>"], seq)?;
            }
        }
        Ok(seq)
    }

    fn seq_of(&self, st: &crate::wire::Elem) -> Result<u64, String> {
        match parse_id(st.id()) {
            Some((tag, seq)) if tag == self.tag => Ok(seq),
            _ => Err(format!("stanza not from this run: {}", preview(&st.bytes))),
        }
    }
}

/// `bytes` must be exactly the concatenation of `parts`.
pub fn expect_parts(bytes: &[u8], parts: &[&[u8]], seq: u64) -> Result<(), String> {
    let mut at = 0;
    for p in parts {
        if bytes.get(at..at + p.len()) != Some(*p) {
            return Err(format!(
                "stanza {seq} is not intact at byte {at}: {}",
                preview(bytes)
            ));
        }
        at += p.len();
    }
    if at != bytes.len() {
        return Err(format!("stanza {seq} has {} extra bytes", bytes.len() - at));
    }
    Ok(())
}

/// The start of a stanza, for error messages.
pub fn preview(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
    if b.len() > 300 {
        format!("{s}… ({} bytes)", b.len())
    } else {
        s
    }
}

impl crate::engine::Traffic for Plan<'_> {
    fn request(&self, seq: u64, out: &mut Vec<u8>) {
        Plan::request(self, seq, out)
    }

    fn respond(&self, st: &crate::wire::Elem, out: &mut Vec<u8>) -> Result<(), String> {
        Plan::respond(self, st, out)
    }

    fn check_final(&self, st: &crate::wire::Elem) -> Result<u64, String> {
        Plan::check_final(self, st)
    }

    fn classify(&self, st: &crate::wire::Elem) -> Result<crate::engine::Class, String> {
        use crate::engine::Class;
        match (self.flow, st.name.as_str(), st.stanza_type()) {
            (Flow::Pass, "message", Some("chat")) => Ok(Class::Final),
            (Flow::Seed, "iq", Some("get")) => Ok(Class::Request),
            (Flow::Seed, "iq", Some("result")) => Ok(Class::Final),
            _ => Err(format!("unexpected stanza: {}", preview(&st.bytes))),
        }
    }
}
