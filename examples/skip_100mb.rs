//! Peak memory while the framer skips a 100 MB stanza (issue 11: "skip
//! without buffering: peak memory while skipping a 100 MB stanza stays
//! flat; measure it").
//!
//! Streams one 100 MB stanza through a [`Framer`] with per-stanza limits,
//! in 64 KiB reads generated on the fly (the input is never whole in
//! memory), then a normal stanza after it, and prints the process's peak
//! resident set (`VmHWM`) before and after, for each tokenizer:
//!
//! ```text
//! cargo run --release --example skip_100mb
//! ```

use std::time::Instant;

use bytes::BytesMut;
use jatproxy::xml::{Frame, Framer, FramerLimits, Tokenizer};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams'>";
const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 100 * 1024 * 1024;

/// A line of /proc/self/status, in KiB.
fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let limits = FramerLimits {
        per_stanza: true,
        ..FramerLimits::default()
    };
    let mut piece = Vec::with_capacity(CHUNK);
    while piece.len() < CHUNK {
        piece
            .extend_from_slice(b"<p a='&gt;'>&apos;&apos;&apos;xxxxxxxxxxxxxxxxx<![CDATA[<]]></p>");
    }
    piece.truncate(CHUNK);
    // Cut where a `<p>` starts, so every read is whole elements.
    let cut = piece
        .windows(3)
        .rposition(|w| w == b"<p ")
        .unwrap_or(piece.len());
    piece.truncate(cut);
    println!(
        "limits: max_stanza_bytes={} per_stanza=true; stanza {} MiB in {} B reads",
        limits.max_stanza_bytes,
        TOTAL >> 20,
        piece.len()
    );
    println!("VmHWM at start: {} KiB", status_kib("VmHWM:").unwrap_or(0));
    for t in [Tokenizer::Fast, Tokenizer::Rxml] {
        let mut f = Framer::with_tokenizer(limits, t);
        let mut buf = BytesMut::with_capacity(CHUNK);
        buf.extend_from_slice(HEADER);
        buf.extend_from_slice(
            b"<iq type='set' id='huge' to='p.example.test' from='u@example.test/r'><q>",
        );
        let started = Instant::now();
        let (mut fed, mut peak_buf) = (0usize, 0usize);
        let mut skipped = None;
        let mut after = None;
        let mut tail_sent = false;
        while after.is_none() {
            if fed < TOTAL {
                buf.extend_from_slice(&piece);
                fed += piece.len();
            } else if !tail_sent {
                buf.extend_from_slice(b"</q></iq><iq type='get' id='next' to='p.example.test'/>");
                tail_sent = true;
            } else {
                eprintln!("{t}: the input ended before the stanza after the skipped one");
                std::process::exit(1);
            }
            peak_buf = peak_buf.max(buf.len());
            loop {
                match f.next_frame(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(Frame::Skipped(s))) => skipped = Some(s),
                    Ok(Some(Frame::Stanza(s))) => after = Some(s),
                    Ok(Some(_)) => {}
                    Err(e) => {
                        eprintln!("{t}: {e}");
                        std::process::exit(1);
                    }
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let s = skipped.unwrap_or_else(|| {
            eprintln!("{t}: nothing was skipped");
            std::process::exit(1)
        });
        println!(
            "{t}: skipped {} bytes ({:?} limit, head id {:?}) in {:.2} s ({:.0} MB/s); \
             next stanza id {:?}; largest read buffer {} KiB; VmHWM now {} KiB",
            s.len,
            s.limit,
            s.head.as_ref().and_then(|h| h.id()),
            secs,
            s.len as f64 / secs / 1e6,
            after.as_ref().and_then(|a| a.id()),
            peak_buf / 1024,
            status_kib("VmHWM:").unwrap_or(0),
        );
    }
}
