//! The component side of XEP-0114 (`handshake::connect`, what jatproxy
//! does upstream) against whatever a server may send.
//!
//! Input: the bytes the server sends, in one go.
//!
//! Checks: no panic; jatproxy writes its stream header, then at most its
//! `<handshake>` with the digest for the id the server gave, and nothing
//! else; success only after `<handshake/>` and a usable header (component
//! namespace, an id); no error shows the secret or our proof (unless the
//! server itself sent those bytes and the error quotes them), or holds a
//! line break (a server's `<text>` must not forge log lines).
#![no_main]

use std::time::Duration;

use jatproxy::config::Secret;
use jatproxy::handshake;
use jatproxy::xml::{Framer, FramerLimits};
use jatproxy_fuzz::block_on;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::FramedRead;

const DOMAIN: &str = "x.example.test";
const SECRET: &str = "fuzz-secret-never-shown";

fuzz_target!(|data: &[u8]| {
    let mut out: Vec<u8> = Vec::new();
    let Some(result) = block_on(async {
        let mut reader = FramedRead::new(data, Framer::new(FramerLimits::default()));
        // Short: a server that stops short of an answer is a timeout after
        // the REFUSAL_GRACE wait at most, never a hang.
        handshake::connect(
            &mut reader,
            &mut out,
            DOMAIN,
            &Secret::new(SECRET),
            Duration::from_secs(5),
        )
        .await
    }) else {
        return;
    };
    let header = handshake::client_header(DOMAIN);
    assert!(out.starts_with(&header), "our header first");
    let rest = &out[header.len()..];
    match &result {
        Ok(server_header) => {
            let id = server_header.id.as_deref().unwrap_or_default();
            assert!(!id.is_empty(), "accepted a header without an id");
            let proof = handshake::handshake_element(&handshake::digest(id, SECRET));
            assert_eq!(rest, &proof[..], "exactly our proof after the header");
        }
        Err(e) => {
            let shown = [e.to_string(), format!("{e:?}")];
            // An error may quote the server's own bytes; only what the
            // server did not send counts as shown by us.
            let sent = |x: &str| data.windows(x.len()).any(|w| w == x.as_bytes());
            for s in &shown {
                assert!(!s.contains(SECRET) || sent(SECRET), "secret shown: {s}");
                // Our proof is `<handshake>` and 40 hex digits; an error
                // naming the element the server sent (`<handshake\n>` read
                // as `<handshake>`) shows no proof.
                for (i, _) in s.match_indices("<handshake>") {
                    let digits = s.get(i + 11..i + 51).unwrap_or("");
                    let proof = digits.len() == 40 && digits.bytes().all(|b| b.is_ascii_hexdigit());
                    assert!(!proof || sent(&s[i..i + 51]), "proof shown: {s}");
                }
            }
            assert!(
                !shown[0].contains(['\n', '\r']),
                "line break in {}",
                shown[0]
            );
            assert!(
                rest.is_empty() || rest.starts_with(b"<handshake>"),
                "wrote {:?}",
                String::from_utf8_lossy(rest)
            );
        }
    }
});
