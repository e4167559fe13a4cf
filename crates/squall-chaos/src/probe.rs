//! Is it up? Tiny probes for readiness checks and tests: a TCP connect, and a minimal HTTP/1.1
//! client (plain `http://`, `Connection: close`, whole response read, bounded in size and time).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest HTTP response [`http`] reads.
pub const MAX_RESPONSE: usize = 1 << 20;

/// Whether a TCP connection to `addr` (`host:port`) succeeds within `timeout`.
pub async fn tcp(addr: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// An HTTP response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (as sent; chunked encoding is not decoded).
    pub body: String,
}

/// Splits `http://host:port/path` into (`host:port`, `/path`).
pub fn split_url(url: &str) -> std::io::Result<(String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{url}` is not an http:// URL"),
        )
    })?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

/// Sends `method url` with an optional JSON `body` and reads the whole response, all within
/// `timeout`.
pub async fn http(
    method: &str,
    url: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let (host, path) = split_url(url)?;
    let fut = async {
        let mut s = TcpStream::connect(&host).await?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
            .await?;
        parse(&buf)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{method} {url}: no response within {timeout:?}"),
        )
    })?
}

fn parse(buf: &[u8]) -> std::io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(buf);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(HttpResponse { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/a/b").unwrap(),
            ("127.0.0.1:8080".into(), "/a/b".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".into(), "/".into())
        );
        assert!(split_url("https://x").is_err());
    }

    #[test]
    fn responses_parse() {
        let r = parse(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 2\r\n\r\nno").unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 405,
                body: "no".into()
            }
        );
        assert!(parse(b"garbage").is_err());
    }
}
