//! Per-stanza limits: stanzas over the size, depth or token limit,
//! embedded in a valid stream, are skipped whole, and everything around
//! them comes out intact, byte-equal, whatever the chunking and on both
//! tokenizers.
//!
//! The input is a recipe, so every stream built from it is well-formed:
//! - byte 0: limits — bits 0–1 `max_stanza_bytes` (2048, 4096, 8192,
//!   2048), bits 2–3 `max_depth` (2, 4, 16, 3), bits 4–5
//!   `max_token_bytes` (40, 64, 1024, 100);
//! - byte 1: how many chunk-size bytes follow (1–8), then those bytes
//!   (`b + 1` bytes, or `(b - 0xEF) * 512` from 0xF0 up);
//! - then items, each an opcode byte and its arguments: a normal stanza
//!   (under every limit), a keepalive, or an oversize stanza of one kind
//!   (size, depth, token value, token name, token in the start tag), with
//!   fuzz bytes escaped into its text and tricky fragments (`>` in values,
//!   `<` in CDATA, prefixed names) placed inside it.
//!
//! Expected: the normal stanzas byte-equal and in order, one
//! `Frame::Skipped` per oversize stanza with its exact length, the limit it
//! was built to break, and its head (id, kind) recovered; keepalives
//! intact; the stream end framed; bytes consumed == input length.
#![no_main]

use jatproxy::xml::{Frame, FramerLimits, Kind, Limit, Tokenizer};
use jatproxy_fuzz::{chunk_sizes, merged, run_chunked_with, HEADER};
use libfuzzer_sys::fuzz_target;

/// Pieces placed directly inside an oversize stanza (depth 2 at most,
/// tokens short): each is where a naive scanner would lose count.
const FRAGMENTS: [&str; 10] = [
    "<a b='>'/>",
    "<a b=\"/>\"></a>",
    "<x><![CDATA[</iq></message><iq>]]></x>",
    "<![CDATA[]]]]>",
    "<c:q xmlns:c='urn:c' c:a='1'/>",
    "<y z='&apos;&gt;'>&lt;/iq&gt;</y>",
    "<w\n\tv = '1'\r\n/>",
    "]]",
    "\u{263A}\u{1F600}",
    "<e/>",
];

/// What a recipe's stream should frame into.
#[derive(Debug, PartialEq)]
enum Want {
    Stanza(Vec<u8>),
    Space(Vec<u8>),
    Skip {
        limit: Limit,
        len: u64,
        id: String,
        kind: Kind,
    },
}

struct Recipe<'a> {
    data: &'a [u8],
}

impl Recipe<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    /// Up to `max` fuzz bytes as escaped text (valid UTF-8, no markup).
    fn text(&mut self, max: usize, quote: bool) -> String {
        let n = usize::from(self.byte().unwrap_or(0)) % (max + 1);
        let mut s = String::new();
        for _ in 0..n {
            let Some(b) = self.byte() else { break };
            match b {
                b'<' => s.push_str("&lt;"),
                // After a `]]` fragment, a `>` would be `]]>` in text.
                b'>' => s.push_str("&gt;"),
                b'&' => s.push_str("&amp;"),
                b'\'' if quote => s.push_str("&apos;"),
                b'"' if quote => s.push_str("&quot;"),
                b'\t' | b'\n' | b' ' => s.push(char::from(b)),
                0..=0x1F | 0x7F => s.push('.'),
                _ => s.push(char::from(b)),
            }
        }
        s
    }

    fn fragments(&mut self, into: &mut String) {
        let n = self.byte().unwrap_or(0) % 4;
        for _ in 0..n {
            let f = FRAGMENTS[usize::from(self.byte().unwrap_or(0)) % FRAGMENTS.len()];
            into.push_str(f);
        }
    }
}

fn kind_name(k: u8) -> (&'static str, Kind) {
    match k % 3 {
        0 => ("iq", Kind::Iq),
        1 => ("message", Kind::Message),
        _ => ("presence", Kind::Presence),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n % 8) + 1;
    if rest.len() < n {
        return;
    }
    let (size_bytes, recipe) = rest.split_at(n);
    let sizes = chunk_sizes(size_bytes);
    let limits = FramerLimits {
        max_stanza_bytes: [2048, 4096, 8192, 2048][usize::from(control & 3)],
        max_depth: [2, 4, 16, 3][usize::from(control >> 2 & 3)],
        max_token_bytes: [40, 64, 1024, 100][usize::from(control >> 4 & 3)],
        per_stanza: true,
    };
    let token = limits.max_token_bytes.min(limits.max_stanza_bytes);

    let mut r = Recipe { data: recipe };
    let mut input = HEADER.to_vec();
    let mut want = Vec::new();
    let mut count = 0usize;
    while let Some(op) = r.byte() {
        count += 1;
        // Enough items to mix every kind; few enough to run fast.
        if count > 8 {
            break;
        }
        let id = format!("s{count}");
        let (name, kind) = kind_name(op >> 3);
        match op % 8 {
            // Normal stanzas, under every limit.
            0 | 1 => {
                let body = r.text(16, false);
                let s = format!("<{name} id='{id}' to='p.example.test'><b>{body}</b></{name}>");
                input.extend_from_slice(s.as_bytes());
                want.push(Want::Stanza(s.into_bytes()));
            }
            2 => {
                let s = format!("<{name} id='{id}' from='u@e.test/r'/>");
                input.extend_from_slice(s.as_bytes());
                want.push(Want::Stanza(s.into_bytes()));
            }
            3 => {
                let ws = [" ", "\n", "\r\n", "\t "][usize::from(op >> 3) % 4];
                input.extend_from_slice(ws.as_bytes());
                want.push(Want::Space(ws.as_bytes().to_vec()));
            }
            // Oversize stanzas, each over exactly one limit.
            k => {
                let extra = usize::from(r.byte().unwrap_or(0));
                let mut s = format!("<{name} type='get' id='{id}' to='p.example.test'");
                let limit = match k {
                    4 => {
                        s.push('>');
                        r.fragments(&mut s);
                        let text = r.text(32, false);
                        s.push_str(&text);
                        let fill = limits.max_stanza_bytes + extra;
                        // Mostly single bytes; `&apos;` where fuzz says.
                        let unit = if extra % 2 == 0 { "x" } else { "&apos;" };
                        while s.len() < fill {
                            s.push_str(unit);
                        }
                        r.fragments(&mut s);
                        s.push_str(&format!("</{name}>"));
                        Limit::Size
                    }
                    5 => {
                        s.push('>');
                        r.fragments(&mut s);
                        let d = limits.max_depth + extra % 4;
                        for _ in 0..d {
                            s.push_str("<d>");
                        }
                        s.push_str(&r.text(8, false));
                        for _ in 0..d {
                            s.push_str("</d>");
                        }
                        s.push_str(&format!("</{name}>"));
                        Limit::Depth
                    }
                    6 => {
                        s.push('>');
                        r.fragments(&mut s);
                        s.push_str(&format!("<v a='{}'/>", "y".repeat(token + 1 + extra)));
                        r.fragments(&mut s);
                        s.push_str(&format!("</{name}>"));
                        Limit::Token
                    }
                    _ if extra % 2 == 0 => {
                        s.push('>');
                        r.fragments(&mut s);
                        let long = "n".repeat(token + 1 + extra);
                        s.push_str(&format!("<{long}/>"));
                        s.push_str(&format!("</{name}>"));
                        Limit::Token
                    }
                    _ => {
                        // Broken inside the start tag itself.
                        s.push_str(&format!(" pad='{}'>", "p".repeat(token + 1 + extra)));
                        r.fragments(&mut s);
                        s.push_str(&format!("</{name}>"));
                        Limit::Token
                    }
                };
                input.extend_from_slice(s.as_bytes());
                want.push(Want::Skip {
                    limit,
                    len: s.len() as u64,
                    id,
                    kind,
                });
            }
        }
    }
    input.extend_from_slice(b"</stream:stream>");

    for t in [Tokenizer::Fast, Tokenizer::Rxml] {
        for sizes in [&[input.len()][..], &sizes] {
            let run = run_chunked_with(&input, sizes, limits, t);
            assert_eq!(run.error, None, "{t} {sizes:?}");
            let frames = merged(&run.frames);
            let mut got = Vec::new();
            let mut consumed = 0u64;
            for f in &frames {
                consumed += match f {
                    Frame::Skipped(s) => s.len,
                    other => other.bytes().len() as u64,
                };
                got.push(match f {
                    Frame::Header(_) | Frame::End(_) => continue,
                    Frame::Stanza(s) => Want::Stanza(s.bytes.to_vec()),
                    Frame::Whitespace(b) => Want::Space(b.to_vec()),
                    Frame::Skipped(s) => {
                        let head = s
                            .head
                            .as_ref()
                            .unwrap_or_else(|| panic!("{t}: no head {s:?}"));
                        Want::Skip {
                            limit: s.limit,
                            len: s.len,
                            id: head.id().unwrap_or_default().to_owned(),
                            kind: head.kind,
                        }
                    }
                });
            }
            assert_eq!(
                consumed,
                input.len() as u64,
                "{t} {sizes:?}: bytes consumed"
            );
            assert!(
                matches!(frames.last(), Some(Frame::End(_))),
                "{t} {sizes:?}"
            );
            // Keepalives next to each other were merged by the framer too.
            let want = merged_want(&want);
            assert_eq!(got, want, "{t} {sizes:?}");
        }
    }
});

fn merged_want(want: &[Want]) -> Vec<Want> {
    let mut out: Vec<Want> = Vec::new();
    for w in want {
        if let (Some(Want::Space(prev)), Want::Space(b)) = (out.last_mut(), w) {
            prev.extend_from_slice(b);
            continue;
        }
        out.push(match w {
            Want::Stanza(b) => Want::Stanza(b.clone()),
            Want::Space(b) => Want::Space(b.clone()),
            Want::Skip {
                limit,
                len,
                id,
                kind,
            } => Want::Skip {
                limit: *limit,
                len: *len,
                id: id.clone(),
                kind: *kind,
            },
        });
    }
    out
}
