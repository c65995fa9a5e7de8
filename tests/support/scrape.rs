//! One scrape of jatproxy's metrics endpoint, shared by the metrics suite
//! and the end-to-end suites that read counters, and one `GET` of any
//! admin path. Each suite uses what it needs of it.

#![allow(dead_code)]

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

/// `GET path` on the admin endpoint: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: jatproxy\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("admin answer in time")
        .expect("read");
    split(&String::from_utf8(raw).expect("utf-8"))
}

/// (status code, body) of a raw HTTP/1.1 answer.
pub fn split(raw: &str) -> (u16, String) {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {raw:?}"));
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    (code, body.to_owned())
}
