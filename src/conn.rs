//! What every connection does the same way: write queued output in
//! batches, and read frames into the core.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::rewrite::Wire;

/// Output for one connection, in order.
#[derive(Debug)]
pub enum Out {
    Wire(Wire),
    /// Write this (a stream error and/or `</stream:stream>`) and stop.
    Close(bytes::Bytes),
}

/// Writes everything queued on `rx`, flushing only when the queue is
/// empty so a burst becomes few syscalls, and sends a whitespace
/// keepalive after `keepalive` without output. Ends when the queue
/// closes or an [`Out::Close`] is written.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Out>,
    keepalive: Option<Duration>,
) -> std::io::Result<()> {
    let mut bw = BufWriter::with_capacity(64 * 1024, w);
    loop {
        let next = match keepalive {
            Some(k) => match tokio::time::timeout(k, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    bw.write_all(b" ").await?;
                    bw.flush().await?;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(mut out) = next else { break };
        loop {
            match out {
                Out::Wire(wire) => {
                    for chunk in wire.chunks() {
                        bw.write_all(chunk).await?;
                    }
                }
                Out::Close(last) => {
                    bw.write_all(&last).await?;
                    bw.flush().await?;
                    bw.shutdown().await?;
                    return Ok(());
                }
            }
            match rx.try_recv() {
                Ok(o) => out = o,
                Err(_) => break,
            }
        }
        bw.flush().await?;
    }
    bw.flush().await?;
    Ok(())
}
