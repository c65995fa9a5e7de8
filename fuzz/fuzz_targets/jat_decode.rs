//! Jabber Address Translation: what the router does with the resource of
//! `D/ENC` a reply comes back to (`Jat::decode`, then `jid::validate`),
//! and with the `node@D/ENC` of a message or presence (issue 14).
//!
//! Input: a mode byte (bit 0: opaque), then a node and requester
//! addresses separated by 0xFF (invalid UTF-8 replaced): each requester
//! is encoded in turn, put in a conversation address `node@D/ENC` (`D/ENC`
//! when the node is empty or no node part), split back as the router
//! splits a `to`, then decoded.
//!
//! Checks: no panic; every ENC handed out decodes back to its requester
//! (the table, 65 536 entries, holds them all); in inline mode an ENC is
//! the requester itself unless too long for a resourcepart or looking like
//! a token; a string never handed out as a token decodes to nothing in
//! opaque mode; `jid::validate` is idempotent (its output is a fixed
//! point), so an address the router accepts once stays accepted; a
//! conversation address splits back into the service address written to
//! (bare, at D) and exactly the ENC handed out, so a reply to it decodes
//! to the same requester whatever the requester address holds (`/`,
//! `@`, a token prefix).
#![no_main]

use std::num::NonZeroUsize;

use jatproxy::config::JatMode;
use jatproxy::jat::{conversation_from, Jat, MAX_RESOURCE, TOKEN_PREFIX};
use jatproxy::jid;
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = if mode & 1 == 1 {
        JatMode::Opaque
    } else {
        JatMode::Inline
    };
    let Some(cap) = NonZeroUsize::new(1 << 16) else {
        return;
    };
    let now = tokio::time::Instant::now();
    let mut jat = Jat::new(mode, cap, std::time::Duration::from_secs(3600));
    let mut rng = StdRng::seed_from_u64(1);
    let mut parts = rest
        .split(|&b| b == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let node = parts.next().unwrap_or_default();
    let requesters: Vec<String> = parts.collect();
    // A node as the server stamps one: no `/` or `@` (it would be no
    // node part, and the server would not route it to D).
    const D: &str = "proxy.example.test";
    let service = if node.is_empty() || node.contains(['/', '@']) {
        D.to_owned()
    } else {
        format!("{node}@{D}")
    };
    let mut issued = Vec::new();
    for r in &requesters {
        let enc = jat.encode(r, &mut rng, now);
        if mode == JatMode::Inline && r.len() <= MAX_RESOURCE && !r.starts_with(TOKEN_PREFIX) {
            assert_eq!(&enc, r, "inline ENC is the address");
        } else {
            assert!(enc.starts_with(TOKEN_PREFIX), "token expected for {r:?}");
        }
        issued.push((enc, r.clone()));
    }
    for (enc, r) in &issued {
        assert_eq!(jat.decode(enc, now).as_deref(), Some(r.as_str()), "ENC {enc:?}");
        // A message or presence address: split as `from_upstream` splits
        // a `to`, it gives back the service address and the ENC.
        let addr = conversation_from(&service, enc);
        let (bare, res) = jid::split(&addr);
        assert_eq!(bare, service, "{addr:?}");
        assert_eq!(jid::domain(bare), D, "{addr:?}");
        assert_eq!(res, Some(enc.as_str()), "{addr:?}");
        assert_eq!(jat.decode(res.unwrap_or_default(), now).as_deref(), Some(r.as_str()));
    }
    for r in &requesters {
        // A requester string offered as an ENC it was never given.
        let decoded = jat.decode(r, now);
        let was_issued = issued.iter().any(|(e, _)| e == r);
        match mode {
            JatMode::Opaque if !was_issued => assert_eq!(decoded, None, "{r:?}"),
            JatMode::Inline if !r.starts_with(TOKEN_PREFIX) => {
                assert_eq!(decoded.as_deref(), Some(r.as_str()))
            }
            _ => {}
        }
        if let Some(v) = jid::validate(r) {
            assert_eq!(
                jid::validate(&v).as_deref(),
                Some(v.as_str()),
                "validate({r:?}) = {v:?} is not a fixed point"
            );
        }
    }
});
