//! Rewriting a stanza's addresses without re-serialising it.
//!
//! The output is the original bytes with only the `to`/`from` value spans
//! replaced (escaped for that attribute's own quote character), or the
//! attribute inserted at the end of the start tag when it was missing.
//! It is returned as slices of the original [`Bytes`] plus the small new
//! pieces, ready for a vectored write: the payload is never copied.

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

/// `stanza` with `to` and/or `from` replaced by the given decoded values
/// (`None` leaves that attribute as it is).
pub fn rewrite(stanza: &Stanza, to: Option<&str>, from: Option<&str>) -> Wire {
    // (start, end, replacement) in the stanza's bytes; at most two.
    let mut edits: Vec<(usize, usize, Bytes)> = Vec::with_capacity(2);
    for (name, value, attr) in [("to", to, &stanza.to), ("from", from, &stanza.from)] {
        let Some(value) = value else { continue };
        match attr {
            Some(a) => edits.push((
                a.span.start,
                a.span.end,
                Bytes::from(escape::attr(value, a.quote).into_owned()),
            )),
            None => {
                let piece = format!(" {name}='{}'", escape::attr(value, b'\''));
                edits.push((stanza.insert_at, stanza.insert_at, Bytes::from(piece)));
            }
        }
    }
    if edits.is_empty() {
        return Wire::One(stanza.bytes.clone());
    }
    // Stable: two insertions at the same point keep `to` before `from`.
    edits.sort_by_key(|e| e.0);
    let mut parts = Vec::with_capacity(edits.len() * 2 + 1);
    let mut at = 0;
    for (start, end, piece) in edits {
        if start > at {
            parts.push(stanza.bytes.slice(at..start));
        }
        parts.push(piece);
        at = end;
    }
    if at < stanza.bytes.len() {
        parts.push(stanza.bytes.slice(at..));
    }
    Wire::Parts(parts)
}
