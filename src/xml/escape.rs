//! Escaping text for attribute values and character data.
//!
//! Values written into a stanza come from decoded attributes (a JID may
//! legally contain `&`, `'` or `"`), so they are escaped for the quote
//! character of the attribute they go into. TAB, LF and CR are written as
//! character references: written literally, a parser would normalise them
//! to spaces and the value would not round-trip.

use std::borrow::Cow;

fn needs_escape(b: u8, quote: u8) -> bool {
    matches!(b, b'&' | b'<' | b'>' | b'\t' | b'\n' | b'\r') || b == quote
}

/// Escapes `value` for an attribute delimited by `quote` (`'` or `"`).
pub fn attr(value: &str, quote: u8) -> Cow<'_, str> {
    if !value.bytes().any(|b| needs_escape(b, quote)) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 16);
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\'' if quote == b'\'' => out.push_str("&apos;"),
            '"' if quote == b'"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Escapes character data (element text).
pub fn text(value: &str) -> Cow<'_, str> {
    if !value.bytes().any(|b| matches!(b, b'&' | b'<' | b'>')) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 16);
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_borrowed() {
        assert!(matches!(attr("user@example/res", b'\''), Cow::Borrowed(_)));
    }

    #[test]
    fn quote_is_escaped_only_for_its_own_delimiter() {
        assert_eq!(attr(r#"o'r"ly"#, b'\''), r#"o&apos;r"ly"#);
        assert_eq!(attr(r#"o'r"ly"#, b'"'), r#"o'r&quot;ly"#);
    }

    #[test]
    fn markup_and_whitespace_controls_are_escaped() {
        assert_eq!(
            attr("a&b<c>d\te\nf\rg", b'\''),
            "a&amp;b&lt;c&gt;d&#9;e&#10;f&#13;g"
        );
        assert_eq!(text("1 < 2 & 3 > 2"), "1 &lt; 2 &amp; 3 &gt; 2");
    }
}
