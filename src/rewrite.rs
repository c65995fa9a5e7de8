//! Rewriting a stanza's addresses without re-serialising it.
//!
//! The output is the original bytes with only the `to`/`from` value spans
//! replaced (escaped for that attribute's own quote character), or the
//! attribute inserted at the end of the start tag when it was missing.
//! A stanza up to [`COPY_UP_TO`] bytes comes back as one new buffer (a
//! copy is cheaper than pieces at that size); a larger one as slices of
//! the original [`Bytes`] plus the small new pieces, so rewriting never
//! copies a large payload. Its copy happens later, once:
//! [`crate::connection::write_loop`] writes each piece through its
//! `BufWriter` so a burst becomes few syscalls (a piece at least as large
//! as that buffer goes to the socket directly). [`Wire::to_bytes`] also
//! copies; only tests use it.

use bytes::{Bytes, BytesMut};

use crate::xml::escape;
use crate::xml::frame::Stanza;

/// Bytes on their way out: one buffer, or pieces to be written in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    One(Bytes),
    Parts(Vec<Bytes>),
}

impl Wire {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Wire::One(b) => b.len(),
            Wire::Parts(p) => p.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces, in order.
    pub fn chunks(&self) -> &[Bytes] {
        match self {
            Wire::One(b) => std::slice::from_ref(b),
            Wire::Parts(p) => p,
        }
    }

    /// All pieces in one contiguous buffer (copies unless there is one piece).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Wire::One(b) => b.clone(),
            Wire::Parts(p) if p.len() == 1 => p[0].clone(),
            Wire::Parts(p) => {
                let mut out = BytesMut::with_capacity(self.len());
                for c in p {
                    out.extend_from_slice(c);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for Wire {
    fn from(b: Bytes) -> Self {
        Wire::One(b)
    }
}

/// Up to this size a rewritten stanza is one new buffer: copying a few
/// hundred bytes costs less than the five reference-counted pieces
/// (each cloned, dropped and written on its own) that sharing needs, and
/// most stanzas are this small. Larger ones are pieces, their payload
/// shared, never copied.
pub const COPY_UP_TO: usize = 2048;

/// A new attribute value to write: replacing a value span (escaped for
/// its quote), or a whole attribute inserted at the end of the start tag.
#[derive(Clone, Copy)]
struct Edit<'a> {
    start: usize,
    end: usize,
    name: &'a str,
    /// The value in pieces written one after another (`D`, `/`, ENC), so
    /// an address made of parts needs no `String` of its own.
    value: [&'a str; 3],
    /// The quote of the value replaced; `None`: an inserted attribute.
    quote: Option<u8>,
}

impl Edit<'_> {
    const NONE: Edit<'static> = Edit {
        start: 0,
        end: 0,
        name: "",
        value: ["", "", ""],
        quote: None,
    };

    fn write(&self, out: &mut BytesMut) {
        match self.quote {
            Some(q) => self.write_value(out, q),
            None => {
                for piece in [" ", self.name, "='"] {
                    out.extend_from_slice(piece.as_bytes());
                }
                self.write_value(out, b'\'');
                out.extend_from_slice(b"'");
            }
        }
    }

    fn write_value(&self, out: &mut BytesMut, quote: u8) {
        for piece in self.value {
            out.extend_from_slice(escape::attr(piece, quote).as_bytes());
        }
    }

    /// Bytes it adds, before escaping (a capacity hint).
    fn len(&self) -> usize {
        self.value.iter().map(|p| p.len()).sum::<usize>()
            + if self.quote.is_some() {
                0
            } else {
                self.name.len() + 4
            }
    }
}

/// `stanza` with `to` and/or `from` replaced by the given decoded values
/// (`None` leaves that attribute as it is).
pub fn rewrite(stanza: &Stanza, to: Option<&str>, from: Option<&str>) -> Wire {
    rewrite_parts(stanza, to.map(|t| [t, "", ""]), from.map(|f| [f, "", ""]))
}

/// [`rewrite`] to the full JID `bare/resource` written from its parts:
/// the member-facing `D/ENC` of every routed request, with no `String`
/// made for it.
pub fn rewrite_from_full(stanza: &Stanza, to: Option<&str>, bare: &str, resource: &str) -> Wire {
    rewrite_parts(stanza, to.map(|t| [t, "", ""]), Some([bare, "/", resource]))
}

/// [`rewrite`] with each new value given in pieces written in order.
fn rewrite_parts(stanza: &Stanza, to: Option<[&str; 3]>, from: Option<[&str; 3]>) -> Wire {
    // At most two edits, on the stack: this runs twice per routed request.
    let mut edits = [Edit::NONE; 2];
    let mut n = 0;
    for (name, value, attr) in [("to", to, &stanza.to), ("from", from, &stanza.from)] {
        let Some(value) = value else { continue };
        let (start, end, quote) = match attr {
            Some(a) => (a.span().start, a.span().end, Some(a.quote())),
            None => (stanza.insert_at(), stanza.insert_at(), None),
        };
        edits[n] = Edit {
            start,
            end,
            name,
            value,
            quote,
        };
        n += 1;
    }
    if n == 0 {
        return Wire::One(stanza.bytes.clone());
    }
    let edits = &mut edits[..n];
    // Stable: two insertions at the same point keep `to` before `from`.
    edits.sort_by_key(|e| e.start);
    let added: usize = edits.iter().map(Edit::len).sum();
    let bytes = &stanza.bytes;
    if bytes.len() + added <= COPY_UP_TO {
        let mut out = BytesMut::with_capacity(bytes.len() + added + 16);
        let mut at = 0;
        for e in edits.iter() {
            if e.start > at {
                out.extend_from_slice(&bytes[at..e.start]);
            }
            e.write(&mut out);
            at = e.end;
        }
        if at < bytes.len() {
            out.extend_from_slice(&bytes[at..]);
        }
        return Wire::One(out.freeze());
    }
    // The new values in one buffer, sliced per edit.
    let mut new = BytesMut::with_capacity(added + 16);
    let mut ranges = [0..0, 0..0];
    for (e, range) in edits.iter().zip(ranges.iter_mut()) {
        let begin = new.len();
        e.write(&mut new);
        *range = begin..new.len();
    }
    let new = new.freeze();
    let mut parts = Vec::with_capacity(n * 2 + 1);
    let mut at = 0;
    for (e, range) in edits.iter().zip(ranges) {
        if e.start > at {
            parts.push(bytes.slice(at..e.start));
        }
        parts.push(new.slice(range));
        at = e.end;
    }
    if at < bytes.len() {
        parts.push(bytes.slice(at..));
    }
    Wire::Parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_one;
    use rxml::{Event, Parse, Parser};

    /// Parses `stanza` completely with the namespace-resolving
    /// `rxml::Parser` inside a component stream; returns the root's
    /// unprefixed attributes and the number of events (a cheap fingerprint
    /// of the children).
    fn parse_strict(stanza: &[u8]) -> (Vec<(String, String)>, usize) {
        let mut doc = b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>".to_vec();
        doc.extend_from_slice(stanza);
        doc.extend_from_slice(b"</stream:stream>");
        let mut p = Parser::new();
        let mut input = &doc[..];
        let mut attrs = None;
        let mut depth = 0;
        let mut events = 0;
        loop {
            match p.parse(&mut input, true) {
                Ok(Some(Event::StartElement(_, _, a))) => {
                    depth += 1;
                    if depth == 2 && attrs.is_none() {
                        let mut v: Vec<(String, String)> = a
                            .iter()
                            .filter(|((ns, _), _)| ns.is_none())
                            .map(|((_, name), value)| (name.to_string(), value.to_string()))
                            .collect();
                        v.sort();
                        attrs = Some(v);
                    }
                    events += 1;
                }
                Ok(Some(Event::EndElement(_))) => {
                    depth -= 1;
                    events += 1;
                }
                Ok(Some(_)) => events += 1,
                Ok(None) => break,
                Err(e) => panic!(
                    "rewritten stanza does not parse: {e:?}: {}",
                    String::from_utf8_lossy(stanza)
                ),
            }
        }
        (attrs.unwrap_or_default(), events)
    }

    fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
        attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    const NASTY: &[&str] = &[
        "<iq type='get' id='1' to='proxy.example' from='u@example/r'><query xmlns='q'><x a='/>'/></query></iq>",
        r#"<iq type="set" id="2" to="proxy.example" from="o&apos;b@example/&amp;"><b>&lt;&#x263A;</b></iq>"#,
        "<message xml:lang='de' to  =  'proxy.example' from='u@example/r'><body><![CDATA[</message>]]></body></message>",
        "<c:iq xmlns:c='jabber:component:accept' type='get' id='3' to='proxy.example' from='u@example/r'/>",
        "<iq type='get' id='4'/>",
        "<presence\n to='proxy.example'\n/>",
    ];

    #[test]
    fn new_values_and_nothing_else_change() {
        let values = [
            "impl@example/a",
            "proxy.example/o'b@example/&",
            "x\"y<z>\t\n",
        ];
        for src in NASTY {
            let st = parse_one(src.as_bytes()).expect("fixture frames");
            let (orig_attrs, orig_events) = parse_strict(&st.bytes);
            for to in values {
                for from in values {
                    let out = rewrite(&st, Some(to), Some(from)).to_bytes();
                    let (attrs, events) = parse_strict(&out);
                    assert_eq!(attr(&attrs, "to"), Some(to), "{src}");
                    assert_eq!(attr(&attrs, "from"), Some(from), "{src}");
                    assert_eq!(events, orig_events, "children unchanged: {src}");
                    for (name, value) in &orig_attrs {
                        if name != "to" && name != "from" {
                            assert_eq!(
                                attr(&attrs, name),
                                Some(value.as_str()),
                                "{name} kept in {src}"
                            );
                        }
                    }
                    // Bytes outside the start tag are identical.
                    let tail = &st.bytes[st.insert_at()..];
                    assert!(out.ends_with(tail), "{src}");
                }
            }
        }
    }

    #[test]
    fn only_the_value_spans_change() {
        let src = r#"<iq id='1' to="a@b" type='get' from='c@d/e'><q/></iq>"#;
        let st = parse_one(src.as_bytes()).expect("frames");
        let out = rewrite(&st, Some("x@y"), Some("p'q")).to_bytes();
        assert_eq!(
            &out[..],
            br#"<iq id='1' to="x@y" type='get' from='p&apos;q'><q/></iq>"#
        );
        let out = rewrite(&st, None, Some("z")).to_bytes();
        assert_eq!(
            &out[..],
            br#"<iq id='1' to="a@b" type='get' from='z'><q/></iq>"#
        );
    }

    #[test]
    fn missing_attributes_are_inserted_in_the_start_tag() {
        let st = parse_one(b"<iq type='get' id='4'/>").expect("frames");
        let out = rewrite(&st, Some("a@b"), Some("c")).to_bytes();
        assert_eq!(&out[..], b"<iq type='get' id='4' to='a@b' from='c'/>");
        let st = parse_one(b"<presence\n to='x'\n/>").expect("frames");
        let out = rewrite(&st, None, Some("d/e")).to_bytes();
        assert_eq!(&out[..], b"<presence\n to='x' from='d/e'\n/>");
    }

    #[test]
    fn unchanged_stanza_is_the_same_buffer() {
        let st = parse_one(b"<iq type='get' id='5' to='a'/>").expect("frames");
        match rewrite(&st, None, None) {
            Wire::One(b) => assert_eq!(b.as_ptr(), st.bytes.as_ptr()),
            other => panic!("copied: {other:?}"),
        }
    }

    #[test]
    fn small_stanzas_are_one_buffer_and_large_ones_pieces_of_the_same_bytes() {
        // Just under and just over the size copied whole: the same edits,
        // byte for byte, either way.
        for pad in [COPY_UP_TO - 200, COPY_UP_TO + 200] {
            let body = "y".repeat(pad);
            let xml = format!("<iq type='get' id='7' to='d' from='a@b/c'><q>{body}</q></iq>");
            let st = parse_one(xml.as_bytes()).expect("frames");
            let wire = rewrite(&st, Some("t@x/m0"), Some("d/a@b/c"));
            let want =
                format!("<iq type='get' id='7' to='t@x/m0' from='d/a@b/c'><q>{body}</q></iq>");
            assert_eq!(&wire.to_bytes()[..], want.as_bytes());
            match (&wire, pad < COPY_UP_TO) {
                (Wire::One(_), true) | (Wire::Parts(_), false) => {}
                (other, small) => panic!("small={small}: {other:?}"),
            }
        }
        // An inserted attribute takes the same path.
        let st = parse_one(b"<iq type='get' id='8'/>").expect("frames");
        let wire = rewrite(&st, Some("t'x"), Some("d"));
        assert!(matches!(wire, Wire::One(_)));
        assert_eq!(
            &wire.to_bytes()[..],
            b"<iq type='get' id='8' to='t&apos;x' from='d'/>"
        );
    }

    #[test]
    fn payload_is_shared_not_copied() {
        let big = format!(
            "<message to='a' from='b'><body>{}</body></message>",
            "x".repeat(100_000)
        );
        let st = parse_one(big.as_bytes()).expect("frames");
        let Wire::Parts(parts) = rewrite(&st, Some("c@d/e"), Some("f")) else {
            panic!("expected parts");
        };
        let last = parts.last().expect("tail");
        assert!(last.len() > 100_000);
        // The tail is a slice of the original buffer.
        let base = st.bytes.as_ptr() as usize;
        let p = last.as_ptr() as usize;
        assert!(p >= base && p < base + st.bytes.len());
    }
}
