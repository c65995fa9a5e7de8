//! One scrape of jatproxy's metrics endpoint, shared by the metrics suite
//! and the end-to-end suites that read counters.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a scrape may take.
const WAIT: Duration = Duration::from_secs(15);

/// One scrape: the body of `GET /metrics`, after checking the status line.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: jatproxy\r\n\r\n")
        .await
        .expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("metrics answer in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}
