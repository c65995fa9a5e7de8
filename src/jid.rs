//! Address handling on the relay path.
//!
//! The server in front of us has already normalised the addresses it
//! stamps on stanzas, so routing compares them as strings, splitting at
//! the first `/` (a resource may itself contain `/` and `@`: the inline
//! JAT encoding relies on that). Full JID validation with the `jid` crate
//! is kept for values we decode and turn back into addresses.

/// Splits `a@b/c/d` into (`a@b`, `Some("c/d")`).
pub fn split(jid: &str) -> (&str, Option<&str>) {
    match jid.split_once('/') {
        Some((bare, res)) => (bare, Some(res)),
        None => (jid, None),
    }
}

/// The bare part of an address.
pub fn bare(jid: &str) -> &str {
    split(jid).0
}

/// The domain part of an address: `node@domain/res` → `domain`.
pub fn domain(jid: &str) -> &str {
    let bare = bare(jid);
    bare.split_once('@').map_or(bare, |(_, d)| d)
}

/// Compares two bare addresses the way a normalising server would for
/// ASCII (domains are case-insensitive; the server lower-cases nodes).
pub fn bare_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Parses an address we are about to route to, rejecting what the `jid`
/// crate rejects (stringprep failures, parts over 1023 bytes). A single
/// trailing dot on the domain is stripped first: jid 0.12 keeps it in
/// some cases and then reports wrong part positions. A second one is an
/// empty label, which jid 0.12 lets through (found by fuzzing: the result
/// then changed when validated again).
pub fn validate(addr: &str) -> Option<String> {
    let (bare, res) = split(addr);
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    if bare.ends_with('.') {
        return None;
    }
    let candidate = match res {
        Some(r) => format!("{bare}/{r}"),
        None => bare.to_owned(),
    };
    jid::Jid::new(&candidate).ok().map(|j| j.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_at_first_slash() {
        assert_eq!(
            split("proxy.example/alice@example/phone"),
            ("proxy.example", Some("alice@example/phone"))
        );
        assert_eq!(split("a@b"), ("a@b", None));
        assert_eq!(bare("a@b/c"), "a@b");
        assert_eq!(domain("a@b/c@d"), "b");
        assert_eq!(domain("b/c@d"), "b");
        assert_eq!(domain("a@b"), "b");
        assert_eq!(domain("a@b@c"), "b@c");
    }

    #[test]
    fn validate_normalises_and_rejects() {
        assert_eq!(
            validate("User@Example.ORG/Res").as_deref(),
            Some("user@example.org/Res")
        );
        assert_eq!(
            validate("u@example.org./res").as_deref(),
            Some("u@example.org/res")
        );
        assert_eq!(validate(&format!("{}@example.org", "n".repeat(1024))), None);
        // Fuzzing: jid 0.12 accepted a domain ending in two dots and kept
        // one, so the output was not valid as it stood.
        assert_eq!(validate("u@exampleplergg../replerg.g./res"), None);
        assert_eq!(validate("example.org.."), None);
        assert_eq!(validate("a@@b"), None);
        assert_eq!(validate(""), None);
    }
}
