//! `starling probe URL`: one plain HTTP GET, for health checks where no HTTP
//! client is installed (the container image holds the binary and nothing else).
//! It exits 0 when the answer's status is 2xx, and 1 on any other status, on a
//! connection or read error, and when the whole exchange takes longer than the
//! timeout.

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The most of the answer read while looking for its status line.
const MAX_HEAD: usize = 8 * 1024;

/// The arguments of `starling probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// What to ask for: http://HOST:PORT/PATH (plain HTTP only)
    #[arg(value_name = "URL")]
    pub url: String,
    /// Seconds the connection, request and status line may take together
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    pub timeout: f64,
}

/// A URL split into what the request needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, for connecting (the port defaults to 80).
    pub addr: String,
    /// The `Host` header: the authority as the URL spells it.
    pub host: String,
    /// The path and query, at least "/".
    pub path: String,
}

/// Splits `http://host[:port][/path]`; anything else is an error.
pub fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url:?}: only http:// URLs can be probed");
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if authority.is_empty() || authority.contains('@') {
        bail!("{url:?}: expected http://HOST:PORT/PATH");
    }
    // "[::1]:8080" keeps its brackets; a port is whatever follows the last ':'
    // outside them.
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    let addr = if has_port {
        let port = &authority[authority.rfind(':').unwrap_or(0) + 1..];
        if port.parse::<u16>().is_err() {
            bail!("{url:?}: {port:?} is not a port");
        }
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        addr,
        host: authority.to_owned(),
        path,
    })
}

/// The status code of an answer's first line (`HTTP/1.1 200 OK`), once `head`
/// holds that whole line; `None` while it does not.
pub fn parse_status(head: &[u8]) -> Option<anyhow::Result<u16>> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&head[..end]);
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Some(Err(anyhow::anyhow!("not an HTTP/1 status line: {line:?}")));
    }
    Some(
        code.parse::<u16>()
            .with_context(|| format!("not an HTTP/1 status line: {line:?}")),
    )
}

/// Sends the GET and returns the answer's status code.
async fn fetch_status(target: &Target) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("cannot connect to {}", target.addr))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: starling-probe\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("cannot send the request")?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(status) = parse_status(&head) {
            return status;
        }
        if head.len() >= MAX_HEAD {
            bail!("no status line in the first {MAX_HEAD} bytes");
        }
        let read = stream
            .read(&mut buf)
            .await
            .context("cannot read the answer")?;
        if read == 0 {
            bail!("the connection closed before a status line");
        }
        head.extend_from_slice(&buf[..read]);
    }
}

/// `starling probe`: Ok(()) for a 2xx answer within the timeout, else why not.
pub async fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let target = parse_url(&args.url)?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let status = tokio::time::timeout(timeout, fetch_status(&target))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {timeout:?}", args.url))??;
    if (200..300).contains(&status) {
        println!("{} {status}", args.url);
        Ok(())
    } else {
        bail!("{} answered {status}", args.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str, host: &str, path: &str) -> Target {
        Target {
            addr: addr.to_owned(),
            host: host.to_owned(),
            path: path.to_owned(),
        }
    }

    #[test]
    fn urls_are_split_into_address_host_and_path() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/healthz").unwrap(),
            target("127.0.0.1:8080", "127.0.0.1:8080", "/healthz")
        );
        assert_eq!(
            parse_url("http://node-1").unwrap(),
            target("node-1:80", "node-1", "/")
        );
        assert_eq!(
            parse_url("http://[::1]:9/readyz?x=1").unwrap(),
            target("[::1]:9", "[::1]:9", "/readyz?x=1")
        );
        assert_eq!(
            parse_url("http://[::1]").unwrap(),
            target("[::1]:80", "[::1]", "/")
        );
        assert_eq!(
            parse_url("http://h:1?q").unwrap(),
            target("h:1", "h:1", "/?q")
        );
    }

    #[test]
    fn other_urls_are_refused() {
        for url in [
            "https://127.0.0.1/healthz",
            "127.0.0.1:8080/healthz",
            "http://",
            "http:///x",
            "http://h:port/x",
            "http://h:70000/",
            "http://user@h:1/",
        ] {
            assert!(parse_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn the_status_is_read_from_a_complete_first_line() {
        assert!(parse_status(b"").is_none());
        assert!(parse_status(b"HTTP/1.1 200 O").is_none());
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n").unwrap().unwrap(), 200);
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\nx: y\r\n\r\n")
                .unwrap()
                .unwrap(),
            503
        );
        // No reason phrase is fine.
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n").unwrap().unwrap(), 204);
    }

    #[test]
    fn garbage_is_not_a_status() {
        for head in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/2 200\r\n",
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 abc OK\r\n",
        ] {
            assert!(parse_status(head).unwrap().is_err(), "{head:?}");
        }
    }

    #[tokio::test]
    async fn a_2xx_answer_passes_and_others_fail() {
        use tokio::net::TcpListener;

        async fn serve_once(answer: &'static [u8]) -> String {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer).await;
            });
            format!("http://{addr}/healthz")
        }
        let probe = |url: String| ProbeArgs { url, timeout: 2.0 };
        let ok = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        run(&probe(ok)).await.unwrap();
        let down = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(run(&probe(down)).await.is_err());
        let silent = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (_socket, _) = listener.accept().await.unwrap();
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
            format!("http://{addr}/")
        };
        let started = std::time::Instant::now();
        let err = run(&ProbeArgs {
            url: silent,
            timeout: 0.3,
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
