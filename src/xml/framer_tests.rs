use super::*;
use crate::xml::frame::Frame;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' from='proxy.example.test' id='s1d' xml:lang='en'>";

/// Feeds `input` in pieces of the given sizes (cycled) through the shared
/// driver, collecting frames until the input ends or an error.
fn run_chunked(
    input: &[u8],
    sizes: &[usize],
    limits: FramerLimits,
) -> (Vec<Frame>, Option<FrameError>) {
    let run = crate::xml::chunked::drive(&mut Framer::new(limits), input, sizes);
    (run.frames, run.error)
}

fn run(input: &[u8]) -> (Vec<Frame>, Option<FrameError>) {
    run_chunked(input, &[input.len().max(1)], FramerLimits::default())
}

fn stanzas(frames: &[Frame]) -> Vec<&Stanza> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Stanza(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// Whitespace runs may be split differently by different chunkings (a
/// keepalive is framed as soon as it arrives); merge adjacent ones.
fn merged(frames: Vec<Frame>) -> Vec<Frame> {
    crate::xml::chunked::merged(&frames)
}

/// Compares frame lists, reporting only the first difference (a frame can
/// hold 30 KB).
fn assert_same(got: &[Frame], want: &[Frame], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: frame count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let short = |f: &Frame| format!("{:.300?}", f);
            panic!(
                "{what}: frame {i} differs:\n got {}\nwant {}",
                short(g),
                short(w)
            );
        }
    }
}

fn concat(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.bytes().to_vec()).collect()
}

/// Stanzas that must frame cleanly, each with something nasty in it.
fn nasty_stanzas() -> Vec<String> {
    let big_body = "x".repeat(30 * 1024);
    vec![
        "<iq type='get' id='1' to='proxy.example.test' from='user@example.test/abc'><query xmlns='jabber:iq:version'/></iq>".into(),
        r#"<iq type="set" id="q&quot;1" to="proxy.example.test" from="o&apos;brien@example.test/x"><q xmlns='urn:x' a='/>' b="&gt;"/></iq>"#.into(),
        "<message from='&#x263A;@example.test/&amp;res' to  =  'proxy.example.test' xml:lang='de'><body>gr\u{fc}\u{df}e &lt;3</body></message>".into(),
        "<c:iq xmlns:c='jabber:component:accept' type='result' id='p' to='a@b/c' from='proxy.example.test'/>".into(),
        "<iq xmlns='jabber:client' type='get' id='wrongns' to='x' from='y'/>".into(),
        "<message to='proxy.example.test' from='a@b/c'><body><![CDATA[</iq></message><iq>]]></body></message>".into(),
        format!("<message to='proxy.example.test' from='a@b/c'><body>{big_body}</body></message>"),
        "<presence from='impl@example.test/a' to='proxy.example.test'/>".into(),
        "<presence\n\tfrom='impl@example.test/a'\r\n to='proxy.example.test' type='unavailable' />".into(),
        "<handshake/>".into(),
        "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>".into(),
        "<iq type='get' id='deep'><a><b><c><d xmlns:p='urn:p'><p:e p:x='1' x='2'/></d></c></b></a></iq>".into(),
    ]
    .into_iter()
    .chain(char_class_stanzas().into_iter().map(|(s, ..)| s))
    .collect()
}

/// A stanza as a server may deliver it, with the `to`, `from` and `id`
/// XML 1.0 decodes from it.
type Decoded = (
    String,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

/// Every character class a conforming server (Prosody/expat,
/// ejabberd/fast_xml) may emit and XML 1.0 accepts, where rxml (and so the
/// framers, once) was stricter or decoded otherwise: raw CR (lone, CRLF,
/// CRCRLF, before the quote, TAB or `&`) in values, text and CDATA
/// (§2.11, §3.3.3), C1 controls and U+FDD0–U+FDEF (allowed by [2] Char),
/// astral characters, every form of reference, `]]>` inside a value.
fn char_class_stanzas() -> Vec<Decoded> {
    vec![
        (
            "<iq type='get' id='a\rb' to='proxy.example.test' from='u@example.test/r&#13;x'><q a='\r' b='\r&amp;\r\t'/></iq>".into(),
            Some("proxy.example.test"),
            Some("u@example.test/r\rx"),
            Some("a b"),
        ),
        (
            "<message to='proxy.example.test\r\n' from=\"u@example.test/p\rq\r\r\nz\" id='\t1\r'><body>a\rb\r\nc\r</body></message>".into(),
            Some("proxy.example.test "),
            Some("u@example.test/p q  z"),
            Some(" 1 "),
        ),
        (
            "<message to='proxy.example.test' id='c1'><body><![CDATA[x\ry\r\n\r]]>\r\u{85}\u{9F}\u{FDD0}\u{FDEF}\u{1F600}\u{10FFFD}&#x85;&#xFDD0;&#x1F600;&#0000065;&#x10FFFF;&apos;&quot;]]&gt;]]]&gt;</body></message>".into(),
            Some("proxy.example.test"),
            None,
            Some("c1"),
        ),
        (
            "<presence from='a\u{85}\u{FDD0}\u{1F600}@example.test' to='proxy.example.test' id='&#x85;&#xFDD0;&#x1F600;&#128512;&apos;]]&gt;]]>&#0000065;'/>".into(),
            Some("proxy.example.test"),
            Some("a\u{85}\u{FDD0}\u{1F600}@example.test"),
            Some("\u{85}\u{FDD0}\u{1F600}\u{1F600}']]>]]>A"),
        ),
        (
            "<iq\rtype='result'\rid='cr&#13;&#10;&#9;'\r\rto='a@b/c'\r/>".into(),
            Some("a@b/c"),
            None,
            Some("cr\r\n\t"),
        ),
    ]
}

fn fixture() -> Vec<u8> {
    let mut s = String::from(HEADER);
    for (i, st) in nasty_stanzas().iter().enumerate() {
        s.push_str(st);
        if i % 3 == 0 {
            s.push_str(" \n ");
        }
        if i % 4 == 1 {
            // A lone CR between stanzas: whitespace (XML 1.0 §2.11).
            s.push('\r');
        }
    }
    s.push_str("</stream:stream>");
    s.into_bytes()
}

#[test]
fn frames_a_stream_in_order() {
    let input = fixture();
    let (frames, err) = run(&input);
    assert_eq!(err, None);
    assert!(
        matches!(&frames[0], Frame::Header(h) if h.from.as_deref() == Some("proxy.example.test")
        && h.id.as_deref() == Some("s1d") && h.xmlns.as_deref() == Some("jabber:component:accept")
        && h.lang.as_deref() == Some("en"))
    );
    assert!(matches!(frames.last(), Some(Frame::End(b)) if &b[..] == b"</stream:stream>"));
    let st = stanzas(&frames);
    assert_eq!(st.len(), nasty_stanzas().len());
    for (got, want) in st.iter().zip(nasty_stanzas()) {
        assert_eq!(&got.bytes[..], want.as_bytes());
    }
    assert!(frames
        .iter()
        .any(|f| matches!(f, Frame::Whitespace(b) if &b[..] == b" \n ")));
    assert_eq!(concat(&frames), input);
}

#[test]
fn every_split_point_gives_identical_frames() {
    let input = fixture();
    let (whole, err) = run(&input);
    assert_eq!(err, None);
    let whole = merged(whole);
    // The 30 KB body makes all n² splits slow; cut around everything else
    // at every byte and through the body at a stride.
    for cut in 0..input.len() {
        if cut > 3000 && cut % 97 != 0 && input.len() - cut > 600 {
            continue;
        }
        let (frames, err) =
            run_chunked(&input, &[cut.max(1), input.len()], FramerLimits::default());
        assert_eq!(err, None, "cut at {cut}");
        assert_eq!(concat(&frames), input, "cut at {cut}");
        assert_same(&merged(frames), &whole, &format!("cut at {cut}"));
    }
}

#[test]
fn odd_chunk_sizes_give_identical_frames() {
    let input = fixture();
    let whole = merged(run(&input).0);
    for sizes in [&[1][..], &[2], &[3], &[5, 7], &[13], &[64], &[4096]] {
        let (frames, err) = run_chunked(&input, sizes, FramerLimits::default());
        assert_eq!(err, None, "sizes {sizes:?}");
        assert_eq!(concat(&frames), input, "sizes {sizes:?}");
        assert_same(&merged(frames), &whole, &format!("sizes {sizes:?}"));
    }
}

#[test]
fn facts_and_spans() {
    let (frames, _) = run(&fixture());
    let st = stanzas(&frames);
    let iq = st[0];
    assert_eq!(iq.kind, Kind::Iq);
    assert_eq!((iq.stanza_type(), iq.id()), (Some("get"), Some("1")));
    assert_eq!(iq.to(), Some("proxy.example.test"));
    assert_eq!(iq.from(), Some("user@example.test/abc"));
    let to = iq.to.as_ref().expect("to");
    assert_eq!(&iq.bytes[to.span()], b"proxy.example.test");
    assert_eq!(to.quote(), b'\'');

    // Entities decoded in values; spans cover the raw text.
    let q = st[1];
    assert_eq!(q.id(), Some("q\"1"));
    assert_eq!(q.from(), Some("o'brien@example.test/x"));
    let from = q.from.as_ref().expect("from");
    assert_eq!(&q.bytes[from.span()], b"o&apos;brien@example.test/x");
    assert_eq!(from.quote(), b'"');

    let m = st[2];
    assert_eq!(m.kind, Kind::Message);
    assert_eq!(m.from(), Some("\u{263A}@example.test/&res"));
    assert_eq!(m.to(), Some("proxy.example.test"));

    // Prefixed stanza in the component namespace is an iq; jabber:client is not.
    assert_eq!((st[3].kind, st[3].name.as_ref()), (Kind::Iq, "iq"));
    assert_eq!(st[4].kind, Kind::Other);
    assert_eq!(st[4].ns, "jabber:client");

    // Attribute values with literal whitespace are normalised.
    assert_eq!(st[8].kind, Kind::Presence);
    assert_eq!(st[8].stanza_type(), Some("unavailable"));
    assert_eq!(st[9].name, "handshake");
    assert_eq!(
        (st[10].name.as_ref(), st[10].ns.as_ref()),
        ("error", NS_STREAMS)
    );
}

#[test]
fn insert_point_is_end_of_last_attribute() {
    let (frames, _) = run(&fixture());
    let st = stanzas(&frames);
    let p = st[8];
    assert_eq!(&p.bytes[p.insert_at()..], b" />");
    let h = st[9];
    assert_eq!(&h.bytes[h.insert_at()..], b"/>");
}

#[test]
fn keepalive_is_framed_at_once() {
    let mut f = Framer::new(FramerLimits::default());
    let mut buf = BytesMut::from(HEADER.as_bytes());
    assert!(matches!(f.next_frame(&mut buf), Ok(Some(Frame::Header(_)))));
    buf.extend_from_slice(b" ");
    assert!(matches!(f.next_frame(&mut buf), Ok(Some(Frame::Whitespace(b))) if &b[..] == b" "));
    assert!(buf.is_empty());
}

fn rejected(body: &str) -> FrameError {
    let input = format!("{HEADER}{body}");
    let (_, err) = run_chunked(input.as_bytes(), &[7], FramerLimits::default());
    match err {
        Some(e) => e,
        None => panic!("accepted: {body}"),
    }
}

#[test]
fn rejections() {
    use FrameError::*;
    type Case = (&'static str, fn(&FrameError) -> bool, &'static str);
    let cases: Vec<Case> = vec![
        (
            "<!-- hi --><iq/>",
            |e| matches!(e, Restricted(_)),
            "restricted-xml",
        ),
        (
            "<?pi x?><iq/>",
            |e| matches!(e, Restricted(_)),
            "restricted-xml",
        ),
        (
            "<!DOCTYPE x [<!ENTITY a 'b'>]><iq/>",
            |e| matches!(e, Restricted(_)),
            "restricted-xml",
        ),
        (
            "<message><body>&nbsp;</body></message>",
            |e| matches!(e, NotWellFormed(_)),
            "not-well-formed",
        ),
        (
            "<message><body>\u{0}</body></message>",
            |e| matches!(e, NotWellFormed(_)),
            "not-well-formed",
        ),
        (
            "<iq></message>",
            |e| matches!(e, NotWellFormed(_)),
            "not-well-formed",
        ),
        (
            "<p:iq/>",
            |e| matches!(e, UndeclaredPrefix(p) if p == "p"),
            "not-well-formed",
        ),
        (
            "<iq><q p:a='1'/></iq>",
            |e| matches!(e, UndeclaredPrefix(_)),
            "not-well-formed",
        ),
        (
            "<iq to='a' to='b'/>",
            |e| matches!(e, DuplicateAttribute(a) if a == "to"),
            "not-well-formed",
        ),
        (
            "<iq from='a' id='1' from='b'/>",
            |e| matches!(e, DuplicateAttribute(_)),
            "not-well-formed",
        ),
        (
            "<iq xmlns:a='u' xmlns:b='u'><q a:x='1' b:x='2'/></iq>",
            |e| matches!(e, DuplicateAttribute(_)),
            "not-well-formed",
        ),
        (
            "<iq xmlns='a' xmlns='b'/>",
            |e| matches!(e, DuplicateAttribute(_)),
            "not-well-formed",
        ),
        (
            "hello<iq/>",
            |e| matches!(e, TextAtStreamLevel),
            "bad-format",
        ),
        (
            "<iq a='<'/>",
            |e| matches!(e, NotWellFormed(_)),
            "not-well-formed",
        ),
    ];
    for (input, pred, cond) in cases {
        let e = rejected(input);
        assert!(pred(&e), "{input}: got {e:?}");
        assert_eq!(e.condition().as_str(), cond, "{input}");
    }
    // Invalid UTF-8.
    let mut bad = HEADER.as_bytes().to_vec();
    bad.extend_from_slice(b"<message><body>\xff\xfe</body></message>");
    assert!(matches!(run(&bad).1, Some(NotWellFormed(_))));
}

#[test]
fn many_attributes_take_the_set_path() {
    let attrs: String = (0..40).map(|i| format!(" a{i}='v'")).collect();
    let ok = format!("{HEADER}<iq{attrs}/>");
    assert_eq!(run(ok.as_bytes()).1, None);
    let dup = format!("{HEADER}<iq{attrs} a7='w'/>");
    assert!(matches!(run(dup.as_bytes()).1, Some(FrameError::DuplicateAttribute(a)) if a == "a7"));
}

#[test]
fn bad_root_is_invalid_namespace() {
    let (_, err) = run(b"<stream xmlns='jabber:component:accept'>");
    assert_eq!(
        err.map(|e| e.condition().as_str()),
        Some("invalid-namespace")
    );
    let (_, err) = run(b"<stream:stream xmlns:stream='urn:wrong'>");
    assert_eq!(
        err.map(|e| e.condition().as_str()),
        Some("invalid-namespace")
    );
}

#[test]
fn depth_limit() {
    let limits = FramerLimits {
        max_depth: 4,
        ..FramerLimits::default()
    };
    let ok = format!("{HEADER}<iq><a><b><c/></b></a></iq>");
    assert_eq!(run_chunked(ok.as_bytes(), &[9], limits).1, None);
    let deep = format!("{HEADER}<iq><a><b><c><d/></c></b></a></iq>");
    assert_eq!(
        run_chunked(deep.as_bytes(), &[9], limits).1,
        Some(FrameError::TooDeep { limit: 4 })
    );
}

#[test]
fn oversize_stanza_is_refused_while_arriving() {
    let limits = FramerLimits {
        max_stanza_bytes: 8192,
        max_depth: 64,
        ..FramerLimits::default()
    };
    let mut f = Framer::new(limits);
    let mut buf = BytesMut::from(HEADER.as_bytes());
    assert!(matches!(f.next_frame(&mut buf), Ok(Some(Frame::Header(_)))));
    buf.extend_from_slice(b"<message><body>");
    let mut fed = 0usize;
    let err = loop {
        buf.extend_from_slice(&[b'a'; 1000]);
        fed += 1000;
        assert!(fed < 100_000, "limit never hit");
        match f.next_frame(&mut buf) {
            Ok(None) => continue,
            Ok(Some(fr)) => panic!("unexpected frame {fr:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, FrameError::TooLarge { limit: 8192 });
    assert!(fed <= 8192 + 1000, "refused only after {fed} bytes");
    // The framer stays failed.
    assert_eq!(
        f.next_frame(&mut buf),
        Err(FrameError::TooLarge { limit: 8192 })
    );
}

#[test]
fn oversize_attribute_value_is_too_large() {
    let limits = FramerLimits {
        max_stanza_bytes: 8192,
        max_depth: 64,
        ..FramerLimits::default()
    };
    let input = format!("{HEADER}<iq to='{}'/>", "a".repeat(10_000));
    assert_eq!(
        run_chunked(input.as_bytes(), &[512], limits).1,
        Some(FrameError::TooLarge { limit: 8192 })
    );
}

#[test]
fn eof_mid_stanza_is_truncated_and_between_stanzas_is_not() {
    let mid = format!("{HEADER}<iq type='get'><query");
    assert_eq!(run(mid.as_bytes()).1, Some(FrameError::Truncated));
    let clean = format!("{HEADER}<iq type='get'/>");
    let (frames, err) = run(clean.as_bytes());
    assert_eq!(err, None);
    assert_eq!(frames.len(), 2);
}

#[test]
fn nothing_after_stream_end_is_framed() {
    let input = format!("{HEADER}</stream:stream><iq/>");
    let (frames, err) = run(input.as_bytes());
    assert_eq!(err, None);
    assert!(matches!(frames.last(), Some(Frame::End(_))));
}

#[test]
fn split_multibyte_characters_keep_offsets_exact() {
    // 2-, 3- and 4-byte characters in text and in a to/from value, fed one
    // byte at a time: every offset after them must stay exact.
    let input = format!(
        "{HEADER}<message to='\u{263A}@example.test' from='a@b/\u{1F600}'><body>\u{fc}\u{20AC}\u{1F600}</body></message><iq to='x' from='y'/></stream:stream>"
    );
    let whole = merged(run(input.as_bytes()).0);
    for sizes in [&[1][..], &[2], &[3], &[1, 2, 5]] {
        let (frames, err) = run_chunked(input.as_bytes(), sizes, FramerLimits::default());
        assert_eq!(err, None);
        assert_eq!(concat(&frames), input.as_bytes());
        assert_same(&merged(frames), &whole, &format!("sizes {sizes:?}"));
    }
    let st = stanzas(&whole);
    let from = st[0].from.as_ref().expect("from");
    assert_eq!(&st[0].bytes[from.span()], "a@b/\u{1F600}".as_bytes());
}

#[test]
fn utf8_prefix() {
    assert_eq!(complete_utf8_prefix(b"ab"), 2);
    assert_eq!(complete_utf8_prefix(b"a\xc3"), 1);
    assert_eq!(complete_utf8_prefix(b"a\xc3\xbc"), 3);
    assert_eq!(complete_utf8_prefix(b"a\xf0\x9f\x98"), 1);
    assert_eq!(complete_utf8_prefix(b"a\xf0\x9f\x98\x80"), 5);
    assert_eq!(complete_utf8_prefix(b"\x80\x80\x80\x80\x80"), 5);
}

/// Found by fuzzing (framer_differential, rewriter): with text buffering
/// off, rxml 0.14 under-counts a CDATA section holding a `]` by up to three
/// bytes, so a frame cut at the summed event lengths lost its last bytes
/// and the next frame began with them (`>` at stream level).
#[test]
fn cdata_with_brackets_keeps_frames_whole() {
    let sent = [
        "<message to='a@b/c'><body><![CDATA[x]y]]></body></message>",
        "<message><body><![CDATA[a[b[1]]]]></body></message>",
        "<message><body><![CDATA[]]]></body></message>",
        "<message><body><![CDATA[]]]]]]></body><x/></message>",
        "<iq to='x' from='y'/>",
    ];
    let input = format!("{HEADER}{}</stream:stream>", sent.concat());
    for sizes in [&[input.len()][..], &[1], &[2], &[3], &[5, 7], &[64]] {
        let (frames, err) = run_chunked(input.as_bytes(), sizes, FramerLimits::default());
        assert_eq!(err, None, "sizes {sizes:?}");
        assert_eq!(concat(&frames), input.as_bytes(), "sizes {sizes:?}");
        let got: Vec<&[u8]> = stanzas(&frames).iter().map(|s| &s.bytes[..]).collect();
        let want: Vec<&[u8]> = sent.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(got, want, "sizes {sizes:?}");
        let iq = stanzas(&frames)[4];
        let to = iq.to.as_ref().expect("to");
        assert_eq!(&iq.bytes[to.span()], b"x", "sizes {sizes:?}");
    }
}

/// Found by fuzzing (framer_chunks, framer_differential): rxml flushes the
/// valid start of the text it has read but counts the undecodable bytes it
/// keeps back in the same event, so whitespace followed by bad UTF-8 became
/// a keepalive frame carrying the bad bytes, forwarded before (or, at end
/// of input, instead of) any error.
#[test]
fn bad_utf8_after_keepalive_is_refused_not_framed() {
    let mut input = HEADER.as_bytes().to_vec();
    input.extend_from_slice(b" \n\xff\xff\xff\xff x");
    for sizes in [&[input.len()][..], &[1], &[3], &[HEADER.len() + 6]] {
        let (frames, err) = run_chunked(&input, sizes, FramerLimits::default());
        assert!(
            matches!(err, Some(FrameError::NotWellFormed(_))),
            "sizes {sizes:?}: {err:?}"
        );
        for f in &frames {
            if let Frame::Whitespace(b) = f {
                assert!(
                    b.iter().all(u8::is_ascii_whitespace),
                    "sizes {sizes:?}: {b:?}"
                );
            }
        }
    }
}

/// Fuzzing (handshake_connect): a peer's stream namespace with `&#13;`
/// in it came back in the error message, and so in a log line, as a raw
/// carriage return.
#[test]
fn bad_header_message_escapes_the_peers_namespace() {
    let input = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streaml:ns:x&#13;treams'/>";
    let (_, err) = run(input);
    let Some(err @ FrameError::BadHeader(_)) = err else {
        panic!("expected a bad header, got {err:?}");
    };
    let shown = err.to_string();
    assert!(!shown.contains(['\r', '\n']), "{shown:?}");
    assert!(
        shown.contains("\\r"),
        "the character is still named: {shown}"
    );
}

/// Found by the fast tokenizer's differential test: an empty CDATA section
/// yields no rxml event, so the running sum of event lengths lagged and a
/// keepalive after it was cut short (`&#32;<![CDA`), the rest glued to the
/// next frame.
#[test]
fn empty_cdata_at_stream_level_stays_whole() {
    let input = format!("{HEADER}&#32;<![CDATA[]]> \n<iq to='x'/><![CDATA[]]><iq to='y'/>");
    for sizes in [&[input.len()][..], &[1], &[3], &[HEADER.len() + 7]] {
        let (frames, err) = run_chunked(input.as_bytes(), sizes, FramerLimits::default());
        assert_eq!(err, None, "sizes {sizes:?}");
        assert_eq!(concat(&frames), input.as_bytes(), "sizes {sizes:?}");
        let st = stanzas(&frames);
        assert_eq!(&st[0].bytes[..], b"<iq to='x'/>", "sizes {sizes:?}");
        assert_eq!(
            &st[1].bytes[..],
            b"<![CDATA[]]><iq to='y'/>",
            "sizes {sizes:?}"
        );
        // Spans count the CDATA section, which rxml reports no event for.
        let to = st[1].to.as_ref().expect("to");
        assert_eq!(&st[1].bytes[to.span()], b"y", "sizes {sizes:?}");
        assert_eq!(&st[1].bytes[st[1].insert_at()..], b"/>", "sizes {sizes:?}");
        for f in &frames {
            if let Frame::Whitespace(b) = f {
                assert!(!b.ends_with(b"<![CDA"), "sizes {sizes:?}: {b:?}");
            }
        }
    }
}

/// Feeds `input` cut once at every byte, and a byte at a time: the frames
/// cover the input exactly and equal the frames of the whole input.
fn assert_every_split(input: &[u8]) -> Vec<Frame> {
    let (whole, err) = run(input);
    assert_eq!(err, None, "whole input");
    assert_eq!(concat(&whole), input, "whole input");
    let whole = merged(whole);
    for cut in 1..input.len() {
        let (frames, err) = run_chunked(input, &[cut, input.len()], FramerLimits::default());
        assert_eq!(err, None, "cut at {cut}");
        assert_eq!(concat(&frames), input, "cut at {cut}");
        assert_same(&merged(frames), &whole, &format!("cut at {cut}"));
    }
    let (frames, err) = run_chunked(input, &[1], FramerLimits::default());
    assert_eq!(err, None, "byte by byte");
    assert_eq!(concat(&frames), input, "byte by byte");
    assert_same(&merged(frames), &whole, "byte by byte");
    whole
}

/// Issue 11: Prosody delivers a user's `&#13;` in an attribute value as a
/// raw CR, and the stream ended on it (`CR in attribute value`). Every
/// character class a server may emit is accepted at every split point
/// (a CR at the end of a read, CRLF split across two), and the values
/// routing uses decode as XML 1.0 says.
#[test]
fn server_character_classes_are_accepted_at_every_split() {
    let cases = char_class_stanzas();
    let mut input = String::from(HEADER);
    for (st, ..) in &cases {
        input.push_str(st);
        input.push_str("\r\n\r");
    }
    input.push_str("</stream:stream>");
    let frames = assert_every_split(input.as_bytes());
    let st = stanzas(&frames);
    assert_eq!(st.len(), cases.len());
    for (s, (raw, to, from, id)) in st.iter().zip(&cases) {
        assert_eq!(&s.bytes[..], raw.as_bytes());
        assert_eq!((s.to(), s.from(), s.id()), (*to, *from, *id), "{raw:?}");
        // The span covers the raw value, up to its closing quote.
        if let Some(a) = &s.to {
            let raw_to = &s.bytes[a.span()];
            assert!(raw_to.starts_with(b"proxy.example.test") || raw_to == b"a@b/c");
            assert_eq!(s.bytes[a.span().end], a.quote());
        }
    }
    assert!(frames
        .iter()
        .any(|f| matches!(f, Frame::Whitespace(b) if &b[..] == b"\r\n\r")));
}

/// A CR is the last byte of the input: lone, so whitespace between
/// stanzas and not a truncated stanza.
#[test]
fn trailing_cr_at_end_of_input_is_whitespace() {
    for tail in ["\r", " \r", "\r\r", "\n\r"] {
        let input = format!("{HEADER}<iq to='x'/>{tail}");
        for sizes in [&[input.len()][..], &[1], &[input.len() - 1, 1]] {
            let (frames, err) = run_chunked(input.as_bytes(), sizes, FramerLimits::default());
            assert_eq!(err, None, "{tail:?} sizes {sizes:?}");
            assert_eq!(
                concat(&frames),
                input.as_bytes(),
                "{tail:?} sizes {sizes:?}"
            );
        }
    }
    // Inside a stanza it is still a truncated stanza.
    let input = format!("{HEADER}<iq to='x\r");
    assert_eq!(run(input.as_bytes()).1, Some(FrameError::Truncated));
}

/// What XML 1.0 forbids stays refused, with the stream error it had:
/// C0 controls raw or as references ([2] Char; servers refuse them too),
/// U+FFFE/U+FFFF, surrogates as references, `]]>` in text ([14]),
/// `&#X…;` (the `x` is lower case, [66]), and a reference too large to
/// be a character however many leading zeros it has.
#[test]
fn forbidden_character_classes_stay_refused() {
    for body in [
        "<iq id='a\u{1}b'/>",
        "<message><body>a\u{1b}b</body></message>",
        "<message><body>&#1;</body></message>",
        "<iq id='&#x1F;'/>",
        "<iq id='&#0;'/>",
        "<message><body>&#xD800;</body></message>",
        "<iq id='&#xDFFF;'/>",
        "<message><body>&#xFFFE;</body></message>",
        "<iq id='&#65535;'/>",
        "<message><body>\u{FFFE}</body></message>",
        "<iq id='\u{FFFF}'/>",
        "<message><body>a]]>b</body></message>",
        "<message><body>&#X41;</body></message>",
        "<message><body>&#x110000;</body></message>",
        "<message><body>&#1114112;</body></message>",
        "<message><body>&#1x;</body></message>",
        "<message><body>&apos</body></message>",
    ] {
        let e = rejected(body);
        assert!(matches!(e, FrameError::NotWellFormed(_)), "{body}: {e:?}");
        assert_eq!(e.condition().as_str(), "not-well-formed", "{body}");
    }
}

/// The bytes Prosody 0.12 and ejabberd 23.01 delivered to a component
/// (captured on loopback) when a user's client sent, in `id` (and, for
/// Prosody, in another attribute and the body): `&#13;`, `&#13;&#10;`,
/// `&#9;`, `&#x85;`, `&#xFDD0;`, an emoji as `&#x1F600;`, `]]&gt;`,
/// `&apos;`, `&#0000000065;` and a raw CR. Prosody writes CR, LF and TAB
/// raw in values and text, ejabberd as `&#xD;` `&#xA;` `&#x9;` in values
/// and `]]>` raw in a value; both write characters, never long references.
#[test]
fn what_prosody_and_ejabberd_deliver_frames_and_decodes() {
    let cases: [(&[u8], &str); 10] = [
        (b"<message to='comp.example.test' id='cr_ref' a='x\ry' from='alice@example.test/g1iiFg5-mf2n' xml:lang='en'><body>x\ry</body></message>", "cr_ref"),
        (b"<message to='comp.example.test' id='cr_ref:x\ry' xml:lang='en' from='alice@example.test/D2xX22hVb9Hn'/>", "cr_ref:x\ry"),
        (b"<message to='comp.example.test' id='crlf_ref:x\r\ny' xml:lang='en' from='alice@example.test/D2xX22hVb9Hn'/>", "crlf_ref:x\r\ny"),
        (b"<message to='comp.example.test' id='tab_ref:x\ty' xml:lang='en' from='alice@example.test/D2xX22hVb9Hn'/>", "tab_ref:x\ty"),
        (b"<message to='comp.example.test' id='c1_ref:x\xc2\x85y' xml:lang='en' from='alice@example.test/D2xX22hVb9Hn'/>", "c1_ref:x\u{85}y"),
        (b"<message to='comp.example.test' id='gt_ref:x]]&gt;y' xml:lang='en' from='alice@example.test/D2xX22hVb9Hn'/>", "gt_ref:x]]>y"),
        (b"<message xml:lang='en' to='comp.example.test' from='alice@example.test/15318219458554849315850' id='crlf_ref:x&#xD;&#xA;y'/>", "crlf_ref:x\r\ny"),
        (b"<message xml:lang='en' to='comp.example.test' from='alice@example.test/15318219458554849315850' id='fdd0_ref:x\xef\xb7\x90y'/>", "fdd0_ref:x\u{FDD0}y"),
        (b"<message xml:lang='en' to='comp.example.test' from='alice@example.test/15318219458554849315850' id='gt_ref:x]]>y'/>", "gt_ref:x]]>y"),
        (b"<message xml:lang='en' to='comp.example.test' from='alice@example.test/15318219458554849315850' id='emoji_ref'><body>x\r\n\xf0\x9f\x98\x80y&apos;</body></message>", "emoji_ref"),
    ];
    let mut input = HEADER.as_bytes().to_vec();
    for (raw, _) in &cases {
        input.extend_from_slice(raw);
    }
    let frames = assert_every_split(&input);
    let st = stanzas(&frames);
    assert_eq!(st.len(), cases.len());
    for (s, (raw, id)) in st.iter().zip(&cases) {
        assert_eq!(&s.bytes[..], *raw);
        // XML 1.0 §3.3.3: a raw CR, LF, TAB or CRLF is one space each;
        // a reference keeps its character.
        let want = if raw.windows(5).any(|w| w == b"&#xD;") {
            id.to_string()
        } else {
            id.replace("\r\n", " ").replace(['\r', '\t'], " ")
        };
        assert_eq!(
            s.id(),
            Some(want.as_str()),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(s.to(), Some("comp.example.test"));
    }
}
