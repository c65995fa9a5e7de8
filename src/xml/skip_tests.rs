//! Per-stanza limits: a stanza over a limit is skipped while streaming,
//! the frames around it come out as if it had not been there, on both
//! tokenizers, at every split point.

use super::*;
use crate::xml::chunked::{drive, merged};
use crate::xml::frame::{Frame, Kind, Limit, Skipped};
use crate::xml::framer::FramerLimits;
use crate::xml::tokenizer::{Framer, Tokenizer};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' from='proxy.example.test' id='s1d'>";

const BEFORE: &[&str] = &[
    "<iq type='get' id='b1' to='proxy.example.test' from='u@example.test/r'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<message to='proxy.example.test' from='u@example.test/r'><body>hi</body></message>",
];
const AFTER: &[&str] = &[
    "<presence to='proxy.example.test' from='u@example.test/r'/>",
    "<iq type='result' id='a1' to='u@example.test/r' from='proxy.example.test'/>",
];

/// Small limits, so the fixtures stay small enough to cut at every byte.
fn limits() -> FramerLimits {
    FramerLimits {
        max_stanza_bytes: 600,
        max_depth: 4,
        max_token_bytes: 64,
        per_stanza: true,
    }
}

const TOKENIZERS: [Tokenizer; 2] = [Tokenizer::Fast, Tokenizer::Rxml];

/// What a run produced, and how many bytes it took out of the buffer.
struct Run {
    frames: Vec<Frame>,
    error: Option<FrameError>,
    /// Bytes taken out of the buffer: frames' bytes, skipped lengths.
    consumed: u64,
}

/// The shared driver on a framer with `t`, counting a skipped stanza's
/// length as consumed (its bytes are gone from the buffer, not framed).
fn run_chunked(input: &[u8], sizes: &[usize], limits: FramerLimits, t: Tokenizer) -> Run {
    let run = drive(&mut Framer::with_tokenizer(limits, t), input, sizes);
    let consumed = run
        .frames
        .iter()
        .map(|fr| match fr {
            Frame::Skipped(s) => s.len,
            other => other.bytes().len() as u64,
        })
        .sum();
    Run {
        frames: run.frames,
        error: run.error,
        consumed,
    }
}

fn whole(input: &[u8], limits: FramerLimits, t: Tokenizer) -> Run {
    run_chunked(input, &[input.len().max(1)], limits, t)
}

fn stream(skipped: &str) -> String {
    let mut s = String::from(HEADER);
    for st in BEFORE {
        s.push_str(st);
        s.push_str("\n ");
    }
    s.push_str(skipped);
    // A keepalive right after the skipped stanza, then more stanzas.
    s.push(' ');
    for st in AFTER {
        s.push_str(st);
    }
    s.push_str("\n</stream:stream>");
    s
}

/// Checks the frames of `stream(skipped)`: the stanzas around intact and
/// byte-equal, one skip of the whole element, everything accounted for.
fn check(run: &Run, input: &str, skipped: &str, limit: Limit, what: &str) -> Skipped {
    assert_eq!(run.error, None, "{what}");
    assert_eq!(run.consumed, input.len() as u64, "{what}: bytes consumed");
    let frames = merged(&run.frames);
    assert!(matches!(frames[0], Frame::Header(_)), "{what}");
    let stanzas: Vec<&[u8]> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Stanza(s) => Some(&s.bytes[..]),
            _ => None,
        })
        .collect();
    let want: Vec<&[u8]> = BEFORE.iter().chain(AFTER).map(|s| s.as_bytes()).collect();
    assert_eq!(stanzas, want, "{what}: stanzas around the skipped one");
    let skips: Vec<&Skipped> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Skipped(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(skips.len(), 1, "{what}: one skip");
    let s = skips[0];
    assert_eq!(s.limit, limit, "{what}");
    assert_eq!(s.len, skipped.len() as u64, "{what}: skipped length");
    // In stream order, between BEFORE and AFTER; the keepalive survives.
    let at = frames
        .iter()
        .position(|f| matches!(f, Frame::Skipped(_)))
        .unwrap_or(0);
    assert!(
        matches!(&frames[at + 1], Frame::Whitespace(b) if &b[..] == b" "),
        "{what}"
    );
    assert!(matches!(&frames[at - 1], Frame::Whitespace(_)), "{what}");
    assert!(
        matches!(frames.last(), Some(Frame::End(b)) if &b[..] == b"\n</stream:stream>" || &b[..] == b"</stream:stream>"),
        "{what}: {:?}",
        frames.last()
    );
    s.clone()
}

/// (kind, type, id, to, from) of a recovered head.
type Head = (
    Kind,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    &'static str,
);

/// A refused stanza and what its refusal must be.
type Refusal = (Vec<u8>, fn(&FrameError) -> bool);

struct Case {
    name: &'static str,
    skipped: String,
    limit: Limit,
    max: usize,
    /// (kind, type, id, to, from) of the head, None if unrecoverable.
    head: Option<Head>,
}

fn cases() -> Vec<Case> {
    let x = |n| "x".repeat(n);
    vec![
        Case {
            name: "size, in text",
            skipped: format!(
                "<iq type='get' id='big' to='proxy.example.test' from='alice@example.test/phone'>\
                 <query xmlns='urn:x'>{}<a/>{}</query></iq>",
                x(40),
                "<b>&apos;&apos;&apos;</b>".repeat(40)
            ),
            limit: Limit::Size,
            max: 600,
            head: Some((
                Kind::Iq,
                Some("get"),
                Some("big"),
                "proxy.example.test",
                "alice@example.test/phone",
            )),
        },
        Case {
            name: "size, with > in values and < in CDATA",
            skipped: format!(
                "<message type='chat' id='m&amp;1' to=\"proxy.example.test\" from='a@example.test/x'>\
                 <body a='>' b=\"/>\"><![CDATA[</message><iq>]]]]>{}</body><x y='</message>'/></message>",
                x(700)
            ),
            limit: Limit::Size,
            max: 600,
            head: Some((
                Kind::Message,
                Some("chat"),
                Some("m&1"),
                "proxy.example.test",
                "a@example.test/x",
            )),
        },
        Case {
            name: "depth",
            skipped: "<iq type='set' id='d' to='proxy.example.test' from='b@example.test/y'>\
                      <a><b><c><d><e/></d></c></b></a></iq>"
                .into(),
            limit: Limit::Depth,
            max: 4,
            head: Some((
                Kind::Iq,
                Some("set"),
                Some("d"),
                "proxy.example.test",
                "b@example.test/y",
            )),
        },
        Case {
            name: "token: a value below the stanza",
            skipped: format!(
                "<presence to='proxy.example.test' from='c@example.test/z'><x a='{}'/></presence>",
                x(100)
            ),
            limit: Limit::Token,
            max: 64,
            head: Some((
                Kind::Presence,
                None,
                None,
                "proxy.example.test",
                "c@example.test/z",
            )),
        },
        Case {
            name: "token: a name below the stanza",
            skipped: format!(
                "<message to='proxy.example.test' from='c@example.test/z'><{0}/><{0}></{0}></message>",
                x(100)
            ),
            limit: Limit::Token,
            max: 64,
            head: Some((
                Kind::Message,
                None,
                None,
                "proxy.example.test",
                "c@example.test/z",
            )),
        },
        Case {
            name: "token: in the start tag itself, prefixed name",
            skipped: format!(
                "<c:iq xmlns:c='jabber:component:accept' type='get' pad='{}' id='s' \
                 to='proxy.example.test' from='d@example.test/w'><q/></c:iq>",
                x(100)
            ),
            limit: Limit::Token,
            max: 64,
            head: Some((
                Kind::Iq,
                Some("get"),
                Some("s"),
                "proxy.example.test",
                "d@example.test/w",
            )),
        },
        Case {
            name: "token: an empty element, its to over the limit",
            skipped: format!(
                "<iq type='get' id='e' to='proxy.example.test' from='{}@example.test/w'/>",
                x(100)
            ),
            limit: Limit::Token,
            max: 64,
            head: Some((
                Kind::Iq,
                Some("get"),
                Some("e"),
                "proxy.example.test",
                // filled in by the test
                "",
            )),
        },
        Case {
            name: "token: the element name, head lost",
            skipped: format!("<{0} to='proxy.example.test'>t</{0}>", x(2000)),
            limit: Limit::Token,
            max: 64,
            head: None,
        },
        Case {
            name: "token: to over the capture cap, head lost",
            skipped: format!("<iq type='get' id='f' to='{}'/>", x(super::MAX_VALUE + 1)),
            limit: Limit::Token,
            max: 64,
            head: None,
        },
    ]
}

fn check_head(s: &Skipped, c: &Case, what: &str) {
    match (&s.head, c.head) {
        (None, None) => {}
        (Some(h), Some((kind, ty, id, to, from))) => {
            assert_eq!(h.kind, kind, "{what}");
            assert_eq!(h.stanza_type(), ty, "{what}");
            assert_eq!(h.id(), id, "{what}");
            assert_eq!(h.to(), Some(to), "{what}");
            if from.is_empty() {
                assert_eq!(
                    h.from(),
                    Some(&*format!("{}@example.test/w", "x".repeat(100)))
                );
            } else {
                assert_eq!(h.from(), Some(from), "{what}");
            }
            // The head is a stanza in its own right: spans point into it.
            let span = h.to.as_ref().map(|a| a.span()).unwrap_or_default();
            assert_eq!(&h.bytes[span], to.as_bytes(), "{what}");
            assert!(h.bytes.ends_with(b"/>"), "{what}");
            assert_eq!(&h.bytes[h.insert_at()..], b"/>", "{what}");
        }
        (got, want) => panic!("{what}: head {got:?}, want {want:?}"),
    }
}

#[test]
fn each_limit_is_skipped_and_the_stream_goes_on() {
    for t in TOKENIZERS {
        for c in cases() {
            let input = stream(&c.skipped);
            let what = format!("{t}: {}", c.name);
            let run = whole(input.as_bytes(), limits(), t);
            let s = check(&run, &input, &c.skipped, c.limit, &what);
            assert_eq!(s.max, c.max, "{what}");
            check_head(&s, &c, &what);
        }
    }
}

#[test]
fn every_split_point_gives_identical_frames() {
    for t in TOKENIZERS {
        for c in cases() {
            // The long-name and long-value cases are long: cut them at a
            // stride, the others at every byte.
            let input = stream(&c.skipped);
            let want = merged(&whole(input.as_bytes(), limits(), t).frames);
            let stride = if input.len() > 4000 { 61 } else { 1 };
            for cut in (1..input.len()).step_by(stride) {
                let what = format!("{t}: {}: cut at {cut}", c.name);
                let run = run_chunked(input.as_bytes(), &[cut, input.len()], limits(), t);
                check(&run, &input, &c.skipped, c.limit, &what);
                assert_eq!(merged(&run.frames), want, "{what}");
            }
            for sizes in [&[1][..], &[2], &[3], &[5, 7], &[64]] {
                let what = format!("{t}: {}: sizes {sizes:?}", c.name);
                let run = run_chunked(input.as_bytes(), sizes, limits(), t);
                check(&run, &input, &c.skipped, c.limit, &what);
                assert_eq!(merged(&run.frames), want, "{what}");
            }
        }
    }
}

#[test]
fn without_per_stanza_the_limit_ends_the_stream_as_before() {
    let fatal = FramerLimits {
        per_stanza: false,
        ..limits()
    };
    for t in TOKENIZERS {
        for c in cases() {
            let input = stream(&c.skipped);
            let run = whole(input.as_bytes(), fatal, t);
            let want = match c.limit {
                Limit::Size => FrameError::TooLarge { limit: 600 },
                Limit::Depth => FrameError::TooDeep { limit: 4 },
                Limit::Token => FrameError::TokenTooLong { limit: 64 },
            };
            assert_eq!(run.error, Some(want), "{t}: {}", c.name);
            assert!(
                !run.frames.iter().any(|f| matches!(f, Frame::Skipped(_))),
                "{t}: {}",
                c.name
            );
        }
    }
}

#[test]
fn what_no_server_sends_still_ends_the_stream_inside_a_skip() {
    let pad = "x".repeat(700);
    let bad: Vec<Refusal> = vec![
        (
            format!("<message><body>{pad}<!-- c --></body></message>").into_bytes(),
            |e| *e == FrameError::Restricted("comments"),
        ),
        (
            format!("<message><body>{pad}<?pi x?></body></message>").into_bytes(),
            |e| *e == FrameError::Restricted("processing instructions"),
        ),
        (
            format!("<message><body>{pad}<!DOCTYPE x></body></message>").into_bytes(),
            |e| *e == FrameError::Restricted("document type declarations"),
        ),
        (
            [
                format!("<message><body>{pad}").as_bytes(),
                b"\xff\xfe",
                b"</body></message>",
            ]
            .concat(),
            |e| matches!(e, FrameError::NotWellFormed(_)),
        ),
        (
            [
                format!("<message><body a='{pad}").as_bytes(),
                b"\x01'/></message>",
            ]
            .concat(),
            |e| matches!(e, FrameError::NotWellFormed(_)),
        ),
    ];
    for t in TOKENIZERS {
        for (stanza, pred) in &bad {
            let mut input = HEADER.as_bytes().to_vec();
            input.extend_from_slice(stanza);
            input.extend_from_slice(AFTER[0].as_bytes());
            for sizes in [&[input.len()][..], &[1], &[7], &[100]] {
                let run = run_chunked(&input, sizes, limits(), t);
                let what = format!("{t} {sizes:?}: {:?}", String::from_utf8_lossy(stanza));
                assert!(
                    run.error.as_ref().is_some_and(pred),
                    "{what}: {:?}",
                    run.error
                );
                assert!(
                    !run.frames.iter().any(|f| matches!(f, Frame::Stanza(_))),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn a_limit_on_the_stream_header_stays_fatal() {
    for t in TOKENIZERS {
        let long = format!(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' id='{}'>",
            "i".repeat(100)
        );
        let run = whole(long.as_bytes(), limits(), t);
        assert_eq!(
            run.error,
            Some(FrameError::TokenTooLong { limit: 64 }),
            "{t}"
        );
        let big = format!(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' {}>",
            (0..80).map(|i| format!(" a{i}='v'")).collect::<String>()
        );
        let run = whole(big.as_bytes(), limits(), t);
        assert_eq!(run.error, Some(FrameError::TooLarge { limit: 600 }), "{t}");
    }
}

#[test]
fn a_limit_on_the_stream_end_stays_fatal() {
    for t in TOKENIZERS {
        let input = format!("{HEADER}</stream:{}>", "s".repeat(100));
        let run = whole(input.as_bytes(), limits(), t);
        assert_eq!(
            run.error,
            Some(FrameError::TokenTooLong { limit: 64 }),
            "{t}"
        );
    }
}

#[test]
fn eof_inside_a_skipped_stanza_is_truncated() {
    for t in TOKENIZERS {
        let input = format!("{HEADER}<message><body>{}", "x".repeat(2000));
        for sizes in [&[input.len()][..], &[64]] {
            let run = run_chunked(input.as_bytes(), sizes, limits(), t);
            assert_eq!(run.error, Some(FrameError::Truncated), "{t} {sizes:?}");
        }
    }
}

#[test]
fn two_skips_in_a_row_and_mid_frame() {
    for t in TOKENIZERS {
        let big = format!("<message><body>{}</body></message>", "x".repeat(700));
        let input = format!("{HEADER}{big}{big}<iq to='x' from='y'/></stream:stream>");
        let run = run_chunked(input.as_bytes(), &[50], limits(), t);
        assert_eq!(run.error, None, "{t}");
        let kinds: Vec<&str> = run
            .frames
            .iter()
            .map(|f| match f {
                Frame::Header(_) => "header",
                Frame::Stanza(_) => "stanza",
                Frame::Skipped(_) => "skipped",
                Frame::Whitespace(_) => "ws",
                Frame::End(_) => "end",
            })
            .collect();
        assert_eq!(
            kinds,
            ["header", "skipped", "skipped", "stanza", "end"],
            "{t}"
        );
        assert_eq!(run.consumed, input.len() as u64, "{t}");
        // Head of an element without attributes: a message with no address.
        let Frame::Skipped(s) = &run.frames[1] else {
            unreachable!("checked above")
        };
        let h = s.head.as_ref().expect("head");
        assert_eq!(
            (h.kind, h.to(), &h.bytes[..]),
            (Kind::Message, None, &b"<message/>"[..])
        );

        let mut f = Framer::with_tokenizer(limits(), t);
        let mut buf =
            BytesMut::from(format!("{HEADER}<message><body>{}", "x".repeat(700)).as_bytes());
        assert!(matches!(f.next_frame(&mut buf), Ok(Some(Frame::Header(_)))));
        assert_eq!(f.next_frame(&mut buf), Ok(None));
        assert!(f.mid_frame(), "{t}: skipping is mid-frame");
        buf.extend_from_slice(b"</body></message>");
        assert!(matches!(
            f.next_frame(&mut buf),
            Ok(Some(Frame::Skipped(_)))
        ));
        assert!(!f.mid_frame(), "{t}");
    }
}

/// Peak memory stays flat: a 100 MB stanza fed in 64 KiB reads, the
/// framer never makes the caller keep more than the limit plus one read,
/// and the stanza after it comes out whole.
#[test]
fn a_100_mb_stanza_is_skipped_in_flat_memory() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 100 * 1024 * 1024;
    let limits = FramerLimits {
        per_stanza: true,
        ..FramerLimits::default()
    };
    let mut piece = Vec::new();
    while piece.len() < CHUNK {
        piece.extend_from_slice(b"<p a='&gt;'>xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx<![CDATA[<]]></p>");
    }
    for t in TOKENIZERS {
        let mut f = Framer::with_tokenizer(limits, t);
        let mut buf = BytesMut::from(HEADER.as_bytes());
        assert!(matches!(f.next_frame(&mut buf), Ok(Some(Frame::Header(_)))));
        buf.extend_from_slice(
            b"<iq type='set' id='huge' to='proxy.example.test' from='u@example.test/r'><q>",
        );
        let mut fed = 0usize;
        let mut peak = 0usize;
        let mut skipped = None;
        let tail =
            b"</q></iq><iq type='get' id='next' to='proxy.example.test' from='u@example.test/r'/>";
        let mut tail_sent = false;
        while skipped.is_none() {
            if fed < TOTAL {
                buf.extend_from_slice(&piece);
                fed += piece.len();
            } else {
                assert!(!tail_sent, "{t}: the stanza's end was read, no skip came");
                buf.extend_from_slice(tail);
                tail_sent = true;
            }
            peak = peak.max(buf.len());
            match f.next_frame(&mut buf) {
                Ok(None) => {}
                Ok(Some(Frame::Skipped(s))) => skipped = Some(s),
                other => panic!("{t}: {other:?}"),
            }
            assert!(
                buf.len() <= limits.max_stanza_bytes + piece.len() + tail.len(),
                "{t}: the framer kept {} bytes",
                buf.len()
            );
        }
        let s = skipped.expect("loop ends with a skip");
        assert_eq!(s.limit, Limit::Size, "{t}");
        assert_eq!(s.head.as_ref().and_then(|h| h.id()), Some("huge"), "{t}");
        assert!(
            peak <= limits.max_stanza_bytes + 2 * CHUNK,
            "{t}: peak {peak}"
        );
        match f.next_frame(&mut buf) {
            Ok(Some(Frame::Stanza(st))) => assert_eq!(st.id(), Some("next"), "{t}"),
            other => panic!("{t}: {other:?}"),
        }
    }
}

#[test]
fn skipper_alone_counts_depth_quotes_and_cdata() {
    let el = b"<a x='>' y=\"'\"><b/><![CDATA[</a>]]><c>t</c></a>";
    let mut rest = el.to_vec();
    rest.extend_from_slice(b"<next/>");
    for n in 1..=el.len() {
        let mut s = Skipper::new();
        let mut buf = BytesMut::new();
        let mut at = 0;
        let done = loop {
            let end = (at + n).min(rest.len());
            buf.extend_from_slice(&rest[at..end]);
            at = end;
            if s.feed(&mut buf).expect("well-formed") {
                break true;
            }
            if at == rest.len() {
                break false;
            }
        };
        assert!(done, "chunk {n}");
        assert_eq!(s.len(), el.len() as u64, "chunk {n}");
        assert!(rest[el.len()..].starts_with(&buf[..]), "chunk {n}");
        assert_eq!(s.head_tag().as_deref(), Some(&b"<a/>"[..]));
    }
    let mut s = Skipper::new();
    let mut buf = BytesMut::from(&b"</stream:stream>"[..]);
    assert_eq!(s.feed(&mut buf), Err(SkipError::NoElement));
    let mut s = Skipper::new();
    let mut buf = BytesMut::from(&b"text<a/>"[..]);
    assert_eq!(s.feed(&mut buf), Err(SkipError::NoElement));
}

/// The third row: an attribute value of 32 769 bytes was logged
/// as "stanza larger than 524288 bytes". It is the token limit, and with
/// per-stanza limits it costs that stanza only.
#[test]
fn a_32769_byte_value_is_the_token_limit_and_says_so() {
    let stanza = format!(
        "<iq type='get' id='v' to='proxy.example.test' from='u@example.test/r'><q a='{}'/></iq>",
        "v".repeat(32 * 1024 + 1)
    );
    let input = stream(&stanza);
    for t in TOKENIZERS {
        let run = whole(input.as_bytes(), FramerLimits::default(), t);
        let e = run.error.expect("refused");
        assert_eq!(e, FrameError::TokenTooLong { limit: 32 * 1024 }, "{t}");
        assert_eq!(
            e.to_string(),
            "attribute value or name longer than 32768 bytes (max_token_bytes)"
        );
        assert_eq!(e.condition().as_str(), "policy-violation");
        let per = FramerLimits {
            per_stanza: true,
            ..FramerLimits::default()
        };
        let run = run_chunked(input.as_bytes(), &[4096], per, t);
        let s = check(&run, &input, &stanza, Limit::Token, &t.to_string());
        assert_eq!(
            (s.max, s.head.as_ref().and_then(|h| h.id())),
            (32 * 1024, Some("v"))
        );
    }
    assert_eq!(
        FrameError::TooLarge { limit: 524_288 }.to_string(),
        "stanza larger than 524288 bytes (max_stanza_bytes)"
    );
    assert_eq!(
        FrameError::TooDeep { limit: 64 }.to_string(),
        "elements nested deeper than 64 (max_depth)"
    );
    assert_eq!(
        (Limit::Size.as_str(), Limit::Depth.key(), Limit::Token.key()),
        ("size", "max_depth", "max_token_bytes")
    );
}

/// A token limit above the stanza limit is the stanza limit: a token that
/// long breaks the size limit anyway (and rxml reserves its scratch buffer
/// at the token limit, so it must stay bounded).
#[test]
fn a_token_limit_above_the_stanza_limit_reports_the_size() {
    let l = FramerLimits {
        max_stanza_bytes: 600,
        max_token_bytes: 1 << 30,
        ..FramerLimits::default()
    };
    assert_eq!(l.token_limit(), 600);
    let input = format!("{HEADER}<iq a='{}'/>", "v".repeat(700));
    for t in TOKENIZERS {
        let run = whole(input.as_bytes(), l, t);
        assert_eq!(run.error, Some(FrameError::TooLarge { limit: 600 }), "{t}");
    }
}
