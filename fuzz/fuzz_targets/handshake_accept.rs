//! The listener's side of XEP-0114 (`handshake::accept`) against whatever
//! an instance may send.
//!
//! Input: the bytes the instance sends, in one go. Every `@DIGEST@` in it
//! is replaced by the right digest for the stream id the listener will
//! draw (the generator is seeded), so the fuzzer reaches the accepting
//! path as well as every refusal.
//!
//! Checks: no panic; what the listener writes always frames cleanly with
//! jatproxy's own framer (its header, then `<handshake/>` or one stream
//! error and the end of the stream); success only with the right digest
//! and a `to` naming the domain; a refusal, framing error or timeout is
//! answered with a stream error; no error shows the secret or the digest
//! (unless it quotes the instance's own bytes outside its proof), or holds
//! a line break (log forging).
#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use jatproxy::config::Secret;
use jatproxy::handshake::{self, HandshakeError};
use jatproxy::xml::{Frame, Framer, FramerLimits};
use jatproxy_fuzz::block_on;
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_util::codec::FramedRead;

const DOMAIN: &str = "x.example.test";
const SECRET: &str = "fuzz-secret-never-shown";
const SEED: u64 = 7;

fuzz_target!(|data: &[u8]| {
    let stream_id = handshake::new_stream_id(&mut StdRng::seed_from_u64(SEED));
    let digest = handshake::digest(&stream_id, SECRET);
    let input = replace(data, b"@DIGEST@", digest.as_bytes());
    let mut out: Vec<u8> = Vec::new();
    let Some(result) = block_on(async {
        let mut reader = FramedRead::new(&input[..], Framer::new(FramerLimits::default()));
        let mut rng = StdRng::seed_from_u64(SEED);
        handshake::accept(
            &mut reader,
            &mut out,
            DOMAIN,
            &Secret::new(SECRET),
            &mut rng,
            Duration::from_secs(5),
        )
        .await
    }) else {
        return;
    };

    let frames = frame_all(&out);
    let header = handshake::server_header(DOMAIN, &stream_id);
    match &result {
        Ok(to) => {
            let mut expected = header.to_vec();
            expected.extend_from_slice(handshake::HANDSHAKE_OK);
            assert_eq!(out, expected, "accepted: header then <handshake/>");
            let bare = to.strip_suffix('.').unwrap_or(to);
            assert!(bare.eq_ignore_ascii_case(DOMAIN), "accepted for {to:?}");
            assert!(
                contains(&input, digest.as_bytes()),
                "accepted without the digest"
            );
        }
        Err(e) => {
            // An error may quote the instance's own bytes (a bad prefix,
            // a namespace); only what it sent outside its proof may show.
            let proof = format!("<handshake>{digest}</handshake>");
            let outside = replace(&input, proof.as_bytes(), b"");
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(
                    !shown.contains(SECRET) || contains(&input, SECRET.as_bytes()),
                    "secret shown: {shown}"
                );
                assert!(
                    !shown.contains(&digest) || contains(&outside, digest.as_bytes()),
                    "digest shown: {shown}"
                );
            }
            assert!(!e.to_string().contains(['\n', '\r']), "line break in {e}");
            let answered = matches!(
                e,
                HandshakeError::Rejected { .. }
                    | HandshakeError::Framing { .. }
                    | HandshakeError::Timeout { .. }
            );
            if answered {
                assert!(out.starts_with(&header), "stream error without our header");
                assert!(out.ends_with(handshake::STREAM_END), "no stream end");
                assert!(
                    frames
                        .iter()
                        .any(|f| matches!(f, Frame::Stanza(s) if s.name == "error")),
                    "no stream error in {:?}",
                    String::from_utf8_lossy(&out)
                );
            } else {
                // Closed or I/O: nothing but (maybe) our header.
                assert!(
                    out.is_empty() || out == header.to_vec(),
                    "{:?}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
});

/// Frames what the listener wrote; it must be a clean stream.
fn frame_all(out: &[u8]) -> Vec<Frame> {
    let mut framer = Framer::new(FramerLimits::default());
    let mut buf = BytesMut::from(out);
    let mut frames = Vec::new();
    loop {
        match framer.next_frame(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => panic!(
                "the listener wrote bytes its own framer refuses ({e}): {:?}",
                String::from_utf8_lossy(out)
            ),
        }
    }
    assert!(
        buf.is_empty(),
        "unframed output: {:?}",
        String::from_utf8_lossy(&buf)
    );
    frames
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}
