//! What the fuzz targets share: driving the framer over a stream cut into
//! pieces (the main crate's `xml::chunked`, which the unit tests use too),
//! and `rxml::Parser` (namespace-resolving, well-formedness
//! checking) as the oracle the framer's output is held against.
//!
//! rxml is stricter than XML 1.0 about a lone CR in an attribute value
//! (it refuses one followed by most characters); the framers follow XML
//! (§2.11: a lone CR is read as LF), so every oracle here reads its input
//! through [`xml_eol`], which does that same-length substitution.
//!
//! rxml also refuses a character reference of more than 8 digits, which
//! XML allows (leading zeros are unbounded) and the fast tokenizer (the
//! default, which `framer_chunks` and `rewriter` run on) accepts: oracles
//! that only read decoded values see such references with the surplus
//! leading zeros removed ([`short_char_refs`]), and the one that measures
//! offsets sees them masked at the same length ([`mask_long_char_refs`]).
//!
//! Every target puts [`HEADER`] before the fuzz input, so stanzas are read
//! in the namespace context a component stream gives them; the oracle wraps
//! a single stanza in the same header, so both see the same declarations.

use std::ops::Range;

pub use jatproxy::xml::chunked::{drive, merged, Run};
pub use jatproxy::xml::differential::xml_eol;
use jatproxy::xml::{Framer, FramerLimits, Tokenizer};
use rxml::error::EndOrError;
use rxml::{AttrMap, Event, Options, Parse, Parser, RawEvent, RawParser, WithOptions};

/// Chunk sizes from fuzz bytes: a byte `b` is `b + 1` bytes, or
/// `(b - 0xEF) * 512` from 0xF0 up, so that a few bytes reach both
/// one-byte cuts and pieces larger than the framer's buffer.
pub fn chunk_sizes(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .map(|&b| match b {
            0xF0.. => usize::from(b - 0xEF) * 512,
            _ => usize::from(b) + 1,
        })
        .collect()
}

/// A chunked-framing input as `framer_chunks` and `fast_vs_rxml` read it:
/// one control byte, then the chunk sizes, then the payload.
pub struct ChunkedInput<'a> {
    /// The control byte: bits 0–2 the number of size bytes minus one
    /// (1–8); bits 3–4 `max_stanza_bytes` (512 KiB, 4096, 512, 200); bits
    /// 5–6 `max_depth` (64, 1, 2, 4); bit 7 is the target's own.
    pub control: u8,
    /// The pieces to cut the stream into ([`chunk_sizes`]).
    pub sizes: Vec<usize>,
    pub limits: FramerLimits,
    pub payload: &'a [u8],
}

impl<'a> ChunkedInput<'a> {
    /// `None` when `data` is too short to hold the control byte and the
    /// sizes it announces.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&control, rest) = data.split_first()?;
        let n = usize::from(control & 7) + 1;
        if rest.len() < n {
            return None;
        }
        let (size_bytes, payload) = rest.split_at(n);
        let limits = FramerLimits {
            max_stanza_bytes: [512 * 1024, 4096, 512, 200][usize::from(control >> 3 & 3)],
            max_depth: [64, 1, 2, 4][usize::from(control >> 5 & 3)],
            ..FramerLimits::default()
        };
        Some(ChunkedInput {
            control,
            sizes: chunk_sizes(size_bytes),
            limits,
            payload,
        })
    }
}

/// Runs `f` to completion on a current-thread runtime with timers (the
/// handshake targets drive async code over an in-memory stream); `None`
/// if no runtime could be built.
pub fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok()?;
    Some(rt.block_on(f))
}

/// Each character reference of more than 8 digits in `input`: the range
/// of its digits.
fn long_char_refs(input: &[u8]) -> Vec<Range<usize>> {
    (0..input.len().saturating_sub(1))
        .filter(|&at| &input[at..at + 2] == b"&#")
        .filter_map(|at| {
            let mut start = at + 2;
            let hex = input.get(start) == Some(&b'x');
            if hex {
                start += 1;
            }
            let len = input[start.min(input.len())..]
                .iter()
                .take_while(|b| {
                    if hex {
                        b.is_ascii_hexdigit()
                    } else {
                        b.is_ascii_digit()
                    }
                })
                .count();
            (len > 8 && input.get(start + len) == Some(&b';')).then(|| start..start + len)
        })
        .collect()
}

/// `input` with the surplus leading zeros of long character references
/// removed (down to 8 digits), so rxml decodes them to the same
/// characters. Offsets into the result are not offsets into `input`.
pub fn short_char_refs(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut at = 0;
    for r in long_char_refs(input) {
        out.extend_from_slice(&input[at..r.start]);
        let digits = &input[r.clone()];
        let zeros = digits.iter().take_while(|&&b| b == b'0').count();
        let drop = zeros.min(digits.len() - 8);
        out.extend_from_slice(&digits[drop..]);
        at = r.end;
    }
    out.extend_from_slice(&input[at..]);
    out
}

/// `input` with every long character reference replaced by plain text
/// of the same length (`xxx…`): values are lost, offsets survive.
pub fn mask_long_char_refs(input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for r in long_char_refs(input) {
        // `&#` + digits + `;` becomes plain text of the same length.
        for b in &mut out[r.start - 2..r.end + 1] {
            *b = b'x';
        }
        if input[r.start - 1] == b'x' {
            out[r.start - 3] = b'x';
        }
    }
    out
}

/// A valid component stream header (the server's side of XEP-0114).
pub const HEADER: &[u8] = b"<stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams'>";

/// What closes the document [`HEADER`] opens.
pub const FOOTER: &[u8] = b"</stream:stream>";

/// Feeds `input` to a fresh framer with the default tokenizer in pieces of
/// `sizes` through the driver the unit tests use ([`drive`]).
pub fn run_chunked(input: &[u8], sizes: &[usize], limits: FramerLimits) -> Run {
    run_chunked_with(input, sizes, limits, Tokenizer::default())
}

/// [`run_chunked`] on a chosen tokenizer.
pub fn run_chunked_with(
    input: &[u8],
    sizes: &[usize],
    limits: FramerLimits,
    tokenizer: Tokenizer,
) -> Run {
    drive(&mut Framer::with_tokenizer(limits, tokenizer), input, sizes)
}

/// The framer's own token limit for these limits (see `Framer::new`): the
/// oracle must not refuse a long value the framer is configured to accept.
pub fn rxml_options(limits: FramerLimits) -> Options {
    Options {
        max_token_length: limits.token_limit(),
        ..Options::default()
    }
}

fn oracle(limits: FramerLimits) -> Parser {
    let mut p = Parser::with_options(rxml_options(limits));
    // As in the framer: text comes out as soon as it is read, so both see
    // the same bytes at the same time.
    p.set_text_buffering(false);
    p
}

/// The error `rxml::Parser` reports for `input` taken as the start of a
/// document that may go on (`at_eof = false`), if any.
pub fn rxml_error(input: &[u8], limits: FramerLimits) -> Option<rxml::Error> {
    let mut p = oracle(limits);
    let input = xml_eol(input);
    let mut rest = &input[..];
    loop {
        match p.parse(&mut rest, false) {
            Ok(Some(_)) => {}
            // End of the document: rxml refuses anything after the root,
            // but the framer stops reading there, so callers do not feed it.
            Ok(None) | Err(EndOrError::NeedMoreData) => return None,
            Err(EndOrError::Error(e)) => return Some(e),
        }
    }
}

/// The character data `bytes` stand for between stanzas, decoded by
/// `rxml::Parser`; an error if they hold anything else or are not XML.
pub fn stream_text(bytes: &[u8]) -> Result<String, String> {
    let mut p = oracle(FramerLimits::default());
    let mut text = String::new();
    let bytes = short_char_refs(&xml_eol(bytes));
    for (part, at_header) in [(HEADER, true), (&bytes[..], false)] {
        let mut rest = part;
        loop {
            match p.parse(&mut rest, false) {
                Ok(Some(Event::Text(_, t))) => text.push_str(&t),
                Ok(Some(Event::StartElement(..))) if at_header => {}
                Ok(Some(ev)) => return Err(format!("not text: {ev:?}")),
                Ok(None) => return Err("document ended".into()),
                Err(EndOrError::NeedMoreData) => break,
                Err(EndOrError::Error(e)) => return Err(e.to_string()),
            }
        }
    }
    Ok(text)
}

/// One top-level element as `rxml::Parser` reads it.
#[derive(Debug)]
pub struct Parsed {
    pub ns: String,
    pub name: String,
    pub attrs: AttrMap,
}

impl Parsed {
    /// An unprefixed attribute's decoded value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get("", name).map(String::as_str)
    }
}

/// Parses `HEADER + element + FOOTER` as a complete document (`at_eof =
/// true`, so an unclosed element is an error, not a wait for more) and
/// returns what it says about the one top-level element, or why it failed.
pub fn parse_element(element: &[u8], limits: FramerLimits) -> Result<Parsed, String> {
    let mut doc = Vec::with_capacity(HEADER.len() + element.len() + FOOTER.len());
    doc.extend_from_slice(HEADER);
    doc.extend_from_slice(element);
    doc.extend_from_slice(FOOTER);
    let doc = short_char_refs(&xml_eol(&doc));
    let mut p = oracle(limits);
    let mut rest = &doc[..];
    let mut depth = 0usize;
    let mut tops = Vec::new();
    loop {
        match p.parse(&mut rest, true) {
            Ok(Some(Event::StartElement(_, (ns, name), attrs))) => {
                depth += 1;
                if depth == 2 {
                    tops.push(Parsed {
                        ns: ns.to_string(),
                        name: name.to_string(),
                        attrs,
                    });
                }
            }
            Ok(Some(Event::EndElement(_))) => depth = depth.saturating_sub(1),
            Ok(Some(Event::Text(..))) if depth == 1 => return Err("text beside the element".into()),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(EndOrError::NeedMoreData) => return Err("still needs data at eof".into()),
            Err(EndOrError::Error(e)) => return Err(e.to_string()),
        }
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes left after the document", rest.len()));
    }
    match (tops.pop(), tops.is_empty()) {
        (Some(top), true) => Ok(top),
        _ => Err("not exactly one top-level element".into()),
    }
}

/// Byte ranges of the root element's unprefixed `to` and `from` attribute
/// events in `element`, read with `RawParser` (which does not resolve
/// prefixes, so the element parses on its own). An attribute event spans
/// `␠name␠=␠'value'`: the running sum of event lengths gives its place.
pub fn root_to_from_events(element: &[u8]) -> Result<[Option<Range<usize>>; 2], String> {
    let mut p = RawParser::new();
    let element = mask_long_char_refs(&xml_eol(element));
    let mut rest = &element[..];
    let mut pos = 0usize;
    let mut found = [None, None];
    loop {
        let ev = match p.parse(&mut rest, true) {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(EndOrError::NeedMoreData) => {
                return Err("element ended before its start tag did".into())
            }
            Err(EndOrError::Error(e)) => return Err(e.to_string()),
        };
        let start = pos;
        pos += ev.metrics().len();
        match ev {
            RawEvent::Attribute(_, (None, local), _) => {
                let slot = match local.as_str() {
                    "to" => 0,
                    "from" => 1,
                    _ => continue,
                };
                if found[slot].replace(start..pos).is_some() {
                    return Err(format!("two {local} attributes"));
                }
            }
            RawEvent::ElementHeadClose(_) => return Ok(found),
            _ => {}
        }
    }
}

/// The raw value inside an attribute event's range: after the first quote
/// byte, before the last byte (the closing quote). Names, `=` and
/// whitespace hold no quote, so the first quote byte opens the value.
pub fn value_range(element: &[u8], event: &Range<usize>) -> Range<usize> {
    let raw = &element[event.clone()];
    let quote = *raw.last().expect("an attribute event is never empty");
    let open = raw
        .iter()
        .position(|&b| b == quote)
        .expect("the closing quote is a quote");
    event.start + open + 1..event.end - 1
}
