//! Jabber Address Translation: what the router does with the resource of
//! `D/ENC` a reply comes back to (`Jat::decode`, then `jid::validate`).
//!
//! Input: a mode byte (bit 0: opaque), then requester addresses separated
//! by 0xFF (invalid UTF-8 replaced), each encoded in turn, then decoded.
//!
//! Checks: no panic; every ENC handed out decodes back to its requester
//! (the table, 65 536 entries, holds them all); in inline mode an ENC is
//! the requester itself unless too long for a resourcepart or looking like
//! a token; a string never handed out as a token decodes to nothing in
//! opaque mode; `jid::validate` is idempotent (its output is a fixed
//! point), so an address the router accepts once stays accepted.
#![no_main]

use std::num::NonZeroUsize;

use jatproxy::config::JatMode;
use jatproxy::jat::{Jat, MAX_RESOURCE, TOKEN_PREFIX};
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
    let requesters: Vec<String> = rest
        .split(|&b| b == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
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
