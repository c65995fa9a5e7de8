//! Framer throughput: `cargo bench --bench framer`.
//!
//! Three generated, deterministic streams (the same bytes on every run):
//! - `mixed`: ~4 MB of component traffic, by count 60 % small iqs with a
//!   nested query, 30 % ~1 KB chat messages with entities and non-ASCII
//!   text, 10 % presence;
//! - `large`: sixteen 256 KiB stanzas, half iqs carrying base64 (avatar
//!   uploads), half messages with long text (framed with a 1 MiB limit);
//! - `small-iq`: ~2 MB of ~114-byte iqs (pings and their results), the
//!   bulk of real component traffic, where per-stanza cost dominates.
//!
//! Each stream is measured in bytes/s (decimal MB) and again in
//! stanzas/s: `memcpy` of the same bytes (the ceiling), `utf8` (`std`'s
//! UTF-8 check alone, the floor of any validating framer), then for each
//! tokenizer (`fast`, `rxml`) `frame` (the framer fed 4096-byte reads, as
//! from a socket) and `frame+rewrite` (framing plus building the
//! rewritten `to`/`from` of every iq, which is what the proxy does per
//! iq: the Wire, not a contiguous copy).
//!
//! Two other tokenizers run over the same bytes, as references a Rust
//! user would pick: `quick-xml` (its slice reader, events only: no
//! UTF-8, namespace, entity or attribute checks; `quick-xml+attrs` also
//! walks every start tag's attributes, which checks their syntax and
//! duplicates) and `xmlparser` (which needs a `&str`, so its row includes
//! `std`'s UTF-8 check). Both get the whole stream as one slice, their
//! best case, not 4 KiB reads; each counts stanzas (depth-2 elements) so
//! a row that stopped early fails the corpus check.
//!
//! Run a subset with a filter, e.g.
//! `cargo bench --bench framer -- 'frame$|quick|xmlparser'`.
//!
//! `FRAMER_CLOCK=cpu` measures the thread's CPU time (from
//! `/proc/thread-self/schedstat`) instead of wall time: on a machine
//! shared with builds, time spent waiting for a core is then not counted,
//! so before/after runs compare (cache and frequency effects of the
//! load remain).

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkGroup, Criterion, Throughput};
use jatproxy::rewrite::rewrite;
use jatproxy::xml::{Frame, Framer, FramerLimits, Kind, Tokenizer};

const HEADER: &str = "<stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' from='proxy.example.test' id='b1'>";

/// Bytes per read, as a socket read into an 4 KiB buffer would deliver them.
const READ: usize = 4096;

/// SplitMix64: a fixed seed gives the same corpus on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Words for message bodies: plain, escaped, and multi-byte UTF-8.
const WORDS: &[&str] = &[
    "hello",
    "the",
    "proxy",
    "forwards",
    "stanzas",
    "&amp;",
    "&lt;3",
    "&apos;quoted&apos;",
    "&#x263A;",
    "Grüße",
    "café",
    "日本語",
    "😀",
    "naïve",
    "Ελληνικά",
    "and",
    "component",
    "\u{2014}",
    "x&gt;y",
    "résumé",
];

fn body_text(rng: &mut Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 32);
    while s.len() < bytes {
        s.push_str(WORDS[rng.below(WORDS.len())]);
        s.push(' ');
    }
    s
}

fn iq(rng: &mut Rng, i: usize) -> String {
    let ty = ["get", "set", "result"][rng.below(3)];
    let user = rng.below(1000);
    format!(
        "<iq type='{ty}' id='iq{i}' to='proxy.example.test' from='user{user}@example.test/res{}'>\
         <query xmlns='http://jabber.org/protocol/disco#info' node='urn:xmpp:node:{user}'>\
         <item jid='item{i}@example.test' name='n{i}'/></query></iq>",
        rng.below(8)
    )
}

fn message(rng: &mut Rng, i: usize) -> String {
    let body = body_text(rng, 860);
    format!(
        "<message to='proxy.example.test' from='user{}@example.test/phone' type='chat' \
         id='m{i}' xml:lang='de'><body>{body}</body>\
         <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        rng.below(1000)
    )
}

fn presence(rng: &mut Rng) -> String {
    let member = rng.below(16);
    if rng.below(4) == 0 {
        format!(
            "<presence type='unavailable' from='impl@example.test/m{member}' to='proxy.example.test'/>"
        )
    } else {
        format!(
            "<presence from='impl@example.test/m{member}' to='proxy.example.test'>\
             <show>chat</show><priority>5</priority></presence>"
        )
    }
}

/// A ping or its result, ~114 bytes.
fn small_iq(rng: &mut Rng, i: usize) -> String {
    let user = rng.below(1000);
    if rng.below(2) == 0 {
        format!(
            "<iq type='get' id='p{i}' to='proxy.example.test' from='u{user}@example.test/r'>\
             <ping xmlns='urn:xmpp:ping'/></iq>"
        )
    } else {
        format!(
            "<iq type='result' id='p{i}' to='u{user}@example.test/r' from='proxy.example.test' \
             xml:lang='en'/>"
        )
    }
}

/// A stream (header and stanzas, still open) and how many stanzas it holds.
struct Corpus {
    bytes: Vec<u8>,
    stanzas: u64,
    limits: FramerLimits,
}

fn mixed(target_bytes: usize) -> Corpus {
    let mut rng = Rng(0x6a61_7470_726f_7879);
    let mut s = String::from(HEADER);
    let mut n = 0;
    while s.len() < target_bytes {
        let stanza = match rng.below(100) {
            0..60 => iq(&mut rng, n),
            60..90 => message(&mut rng, n),
            _ => presence(&mut rng),
        };
        s.push_str(&stanza);
        n += 1;
    }
    Corpus {
        bytes: s.into_bytes(),
        stanzas: n as u64,
        limits: FramerLimits::default(),
    }
}

fn small_iqs(target_bytes: usize) -> Corpus {
    let mut rng = Rng(0x736d_616c_6c5f_6971);
    let mut s = String::from(HEADER);
    let mut n = 0;
    while s.len() < target_bytes {
        s.push_str(&small_iq(&mut rng, n));
        n += 1;
    }
    Corpus {
        bytes: s.into_bytes(),
        stanzas: n as u64,
        limits: FramerLimits::default(),
    }
}

/// 256 KiB stanzas, alternately an avatar upload (an iq carrying base64,
/// as vCard photos do) and a message with a long text body.
fn large(count: usize) -> Corpus {
    const SIZE: usize = 256 * 1024;
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = Rng(0x6c61_7267_6520_7374);
    let mut s = String::from(HEADER);
    for i in 0..count {
        let (head, tail) = if i % 2 == 0 {
            (
                format!(
                    "<iq type='set' id='L{i}' to='proxy.example.test' from='big@example.test/r'>\
                     <vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>"
                ),
                "</BINVAL></PHOTO></vCard></iq>",
            )
        } else {
            (
                format!(
                    "<message to='proxy.example.test' from='big@example.test/r' id='L{i}'><body>"
                ),
                "</body></message>",
            )
        };
        let room = SIZE - head.len() - tail.len() - 16;
        let content = if i % 2 == 0 {
            let mut b = String::with_capacity(room);
            while b.len() < room {
                b.push(if b.len() % 77 == 76 {
                    '\n'
                } else {
                    char::from(B64[rng.below(64)])
                });
            }
            b
        } else {
            body_text(&mut rng, room)
        };
        s.push_str(&head);
        s.push_str(&content);
        s.push_str(tail);
    }
    Corpus {
        bytes: s.into_bytes(),
        stanzas: count as u64,
        limits: FramerLimits {
            max_stanza_bytes: 1024 * 1024,
            ..FramerLimits::default()
        },
    }
}

/// Frames the whole stream from 4 KiB reads; `rewrite_iqs` also builds
/// the rewritten form of every iq. Returns the number of stanzas.
fn frame(corpus: &Corpus, tokenizer: Tokenizer, rewrite_iqs: bool) -> u64 {
    let mut framer = Framer::with_tokenizer(corpus.limits, tokenizer);
    let mut buf = BytesMut::with_capacity(2 * READ);
    let mut stanzas = 0;
    for read in corpus.bytes.chunks(READ) {
        buf.extend_from_slice(read);
        loop {
            match framer.next_frame(&mut buf) {
                Ok(Some(Frame::Stanza(s))) => {
                    stanzas += 1;
                    if rewrite_iqs && s.kind == Kind::Iq {
                        black_box(rewrite(
                            &s,
                            Some("target@example.test/member-3"),
                            Some("proxy.example.test"),
                        ));
                    } else {
                        black_box(&s);
                    }
                }
                Ok(Some(other)) => {
                    black_box(other);
                }
                Ok(None) => break,
                Err(e) => panic!("benchmark corpus does not frame: {e}"),
            }
        }
    }
    stanzas
}

/// quick-xml's slice reader over the whole stream; `attrs` also walks
/// (and so checks) every start tag's attributes. Returns the stanzas.
fn quick_xml(bytes: &[u8], attrs: bool) -> u64 {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(bytes);
    let mut depth = 0u32;
    let mut stanzas = 0;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if attrs {
                    for a in e.attributes() {
                        black_box(a.expect("corpus attributes are well-formed"));
                    }
                }
                depth += 1;
            }
            Ok(Event::Empty(e)) => {
                if attrs {
                    for a in e.attributes() {
                        black_box(a.expect("corpus attributes are well-formed"));
                    }
                }
                stanzas += u64::from(depth == 1);
            }
            Ok(Event::End(_)) => {
                depth -= 1;
                stanzas += u64::from(depth == 1);
            }
            Ok(Event::Eof) => return stanzas,
            Ok(other) => {
                black_box(other);
            }
            // The stream is still open at the end of the corpus.
            Err(_) if reader.buffer_position() as usize >= bytes.len() => return stanzas,
            Err(e) => panic!("quick-xml refuses the corpus: {e}"),
        }
    }
}

/// xmlparser over the whole stream (after `std`'s UTF-8 check, as it
/// takes a `&str`). Returns the stanzas.
fn xmlparser(bytes: &[u8]) -> u64 {
    use xmlparser::{ElementEnd, Token};
    let text = std::str::from_utf8(bytes).expect("corpus is UTF-8");
    let mut depth = 0u32;
    let mut stanzas = 0;
    for token in xmlparser::Tokenizer::from(text) {
        match token {
            Ok(Token::ElementEnd { end, .. }) => match end {
                ElementEnd::Open => depth += 1,
                ElementEnd::Close(..) => {
                    depth -= 1;
                    stanzas += u64::from(depth == 1);
                }
                ElementEnd::Empty => stanzas += u64::from(depth == 1),
            },
            Ok(other) => {
                black_box(other);
            }
            Err(e) => panic!("xmlparser refuses the corpus: {e}"),
        }
    }
    stanzas
}

/// A reference tokenizer's run over a whole stream: the stanzas it saw.
type Run = fn(&[u8]) -> u64;

/// The reference tokenizers' rows: name and stanza-counting run.
const OTHERS: [(&str, Run); 3] = [
    ("quick-xml", |b| quick_xml(b, false)),
    ("quick-xml+attrs", |b| quick_xml(b, true)),
    ("xmlparser", xmlparser),
];

fn cases<M: Measurement>(group: &mut BenchmarkGroup<'_, M>, corpus: &Corpus) {
    let mut dst = vec![0u8; corpus.bytes.len()];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&corpus.bytes));
            black_box(&dst);
        })
    });
    group.bench_function("utf8", |b| {
        b.iter(|| std::str::from_utf8(black_box(&corpus.bytes)).is_ok())
    });
    // The SIMD check the fast tokenizer runs over every byte.
    group.bench_function("simdutf8", |b| {
        b.iter(|| simdutf8::compat::from_utf8(black_box(&corpus.bytes)).is_ok())
    });
    for t in TOKENIZERS {
        group.bench_function(format!("{t}/frame"), |b| {
            b.iter(|| frame(black_box(corpus), t, false))
        });
        group.bench_function(format!("{t}/frame+rewrite"), |b| {
            b.iter(|| frame(black_box(corpus), t, true))
        });
    }
    for (name, run) in OTHERS {
        group.bench_function(name, |b| b.iter(|| run(black_box(&corpus.bytes))));
    }
}

const TOKENIZERS: [Tokenizer; 2] = [Tokenizer::Fast, Tokenizer::Rxml];

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    let corpora = [
        ("mixed", mixed(4_000_000)),
        ("large", large(16)),
        ("small-iq", small_iqs(2_000_000)),
    ];
    for (name, corpus) in corpora {
        // The corpus must frame completely, or the figures mean nothing.
        for t in TOKENIZERS {
            assert_eq!(
                frame(&corpus, t, true),
                corpus.stanzas,
                "{name} {t}: stanza count"
            );
        }
        for (other, run) in OTHERS {
            assert_eq!(
                run(&corpus.bytes),
                corpus.stanzas,
                "{name} {other}: stanza count"
            );
        }
        println!(
            "{name}: {} bytes, {} stanzas, {} bytes/stanza on average",
            corpus.bytes.len(),
            corpus.stanzas,
            corpus.bytes.len() as u64 / corpus.stanzas
        );
        let mut group = c.benchmark_group(format!("{name}/bytes"));
        group.throughput(Throughput::BytesDecimal(corpus.bytes.len() as u64));
        cases(&mut group, &corpus);
        group.finish();

        let mut group = c.benchmark_group(format!("{name}/stanzas"));
        group.throughput(Throughput::Elements(corpus.stanzas));
        for t in TOKENIZERS {
            group.bench_function(format!("{t}/frame"), |b| {
                b.iter(|| frame(black_box(&corpus), t, false))
            });
        }
        for (other, run) in OTHERS {
            group.bench_function(other, |b| b.iter(|| run(black_box(&corpus.bytes))));
        }
        group.finish();
    }
}

/// CPU time of the calling thread, in nanoseconds: the first field of
/// `/proc/thread-self/schedstat` (Linux).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("FRAMER_CLOCK=cpu needs /proc/thread-self/schedstat")
}

/// The thread's CPU time as a criterion measurement (`FRAMER_CLOCK=cpu`).
struct CpuTime;

/// Formats nanoseconds as wall time does.
static NANOS: WallTime = WallTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        NANOS.formatter()
    }
}

/// 42 benchmarks of 0.1–40 ms iterations: about 4 minutes.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn main() {
    if std::env::var("FRAMER_CLOCK").as_deref() == Ok("cpu") {
        let mut c = config().with_measurement(CpuTime).configure_from_args();
        bench(&mut c);
        c.final_summary();
    } else {
        let mut c = config().configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
}
