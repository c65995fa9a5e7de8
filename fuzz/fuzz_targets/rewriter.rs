//! Rewriting `to`/`from` changes those values and nothing else.
//!
//! Input: a flags byte (bit 0: set `to`, bit 1: set `from`), the new `to`,
//! a 0xFF byte, the new `from`, a 0xFF byte, then the stream payload the
//! stanzas are framed from (0xFF never occurs in UTF-8, so it separates
//! unambiguously). The values are any text XML can carry: invalid UTF-8
//! is replaced, and characters XML forbids are dropped.
//!
//! For every stanza framed, the rewritten bytes, alone in a stream, parse
//! with `rxml::Parser`; its `to`/`from` decode to the new values (or stay as
//! they were when not set); its name and other attributes are the
//! original's; and the bytes outside the replaced values (or the inserted
//! attributes) are exactly the original bytes.
#![no_main]

use std::ops::Range;

use jatproxy::rewrite::rewrite;
use jatproxy::xml::{Frame, FramerLimits, Stanza};
use jatproxy_fuzz::{parse_element, root_to_from_events, run_chunked, value_range, HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == 0xFF);
    let (Some(to), Some(from), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let to = xml_text(to);
    let from = xml_text(from);
    let to = (flags & 1 != 0).then_some(to.as_str());
    let from = (flags & 2 != 0).then_some(from.as_str());

    let limits = FramerLimits::default();
    let mut input = HEADER.to_vec();
    input.extend_from_slice(payload);
    let run = run_chunked(&input, &[input.len()], limits);
    for frame in &run.frames {
        if let Frame::Stanza(s) = frame {
            check(s, to, from, limits);
        }
    }
});

/// `raw` as text an XML attribute can hold.
fn xml_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
        })
        .collect()
}

fn check(s: &Stanza, to: Option<&str>, from: Option<&str>, limits: FramerLimits) {
    let orig = &s.bytes[..];
    let out = rewrite(s, to, from).to_bytes();
    let before = parse_element(orig, limits).expect("the framer's stanza parses");
    let after = match parse_element(&out, limits) {
        Ok(p) => p,
        Err(e) => panic!("rewritten stanza does not parse ({e}):\n{orig:?}\n→ {out:?}"),
    };
    assert_eq!(
        (&after.ns, &after.name),
        (&before.ns, &before.name),
        "name changed: {out:?}"
    );
    assert_eq!(after.attr("to"), to.or(s.to()), "to in {out:?}");
    assert_eq!(after.attr("from"), from.or(s.from()), "from in {out:?}");
    let others = |p: &jatproxy_fuzz::Parsed| {
        let mut v: Vec<(String, String, String)> = p
            .attrs
            .iter()
            .filter(|((ns, name), _)| !(ns.is_empty() && matches!(name.as_str(), "to" | "from")))
            .map(|((ns, name), value)| (ns.to_string(), name.to_string(), value.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        others(&after),
        others(&before),
        "other attributes in {out:?}"
    );

    // Pair each edited range of the original with its range in the output,
    // then the bytes between and around them must be the same.
    let events = match root_to_from_events(&out) {
        Ok(e) => e,
        Err(e) => panic!("rewritten start tag ({e}): {out:?}"),
    };
    let mut edits: Vec<(Range<usize>, Range<usize>)> = Vec::new();
    for (value, attr, event) in [(to, &s.to, &events[0]), (from, &s.from, &events[1])] {
        if value.is_none() {
            continue;
        }
        let event = event.clone().expect("a set attribute is present");
        edits.push(match attr {
            Some(a) => (a.span(), value_range(&out, &event)),
            None => (s.insert_at()..s.insert_at(), event),
        });
    }
    edits.sort_by_key(|(o, n)| (o.start, n.start));
    let (mut o_at, mut n_at) = (0, 0);
    for (o, n) in &edits {
        assert!(n.start >= n_at, "edits overlap in {out:?}");
        assert_eq!(
            &out[n_at..n.start],
            &orig[o_at..o.start],
            "bytes changed outside the edits: {out:?}"
        );
        (o_at, n_at) = (o.end, n.end);
    }
    assert_eq!(&out[n_at..], &orig[o_at..], "tail changed: {out:?}");
}
