//! The HTTP client that the scaler and `ringlb ctl` share: one HTTP/1.1 request with hyper's
//! client, bounded in time and body size, and the admin API's retry of a 503 (an upgrade
//! handing over).
//!
//! Owns: the request and its bounds. Must not touch: what the answers mean (the scaler's
//! `source.rs`, `ctl.rs`).

use std::time::Duration;

/// Largest response body the scaler reads (a /metrics page of thousands of series fits).
pub const MAX_BODY: usize = 16 << 20;

/// How many times an admin change answered 503 (a balancer handing over to its successor
/// in an upgrade, which answers a moment later) is asked again, 500 ms apart.
pub const ADMIN_503_RETRIES: u32 = 10;

/// [`http`] for the admin API: a 503 (an upgrade in progress) is asked again, up to
/// [`ADMIN_503_RETRIES`] times, rather than given up (the scaler would stop a backend it
/// launched for want of registration; `ringlb ctl` would fail a drain).
pub async fn admin_http(
    url: &str,
    method: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut retries = 0;
    loop {
        match http(url, method, body, token, timeout).await {
            Ok((503, _)) if retries < ADMIN_503_RETRIES => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            answer => return answer,
        }
    }
}

/// One HTTP/1.1 request with hyper's client, to an `http://host:port/path` URL: the status
/// and the body as text. The whole exchange is bounded by `timeout`, the body by
/// [`MAX_BODY`]; chunked bodies (a chunk may end inside a character) and their extensions
/// are hyper's to read.
pub async fn http(
    url: &str,
    method: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    http_limited(url, method, body, token, timeout, MAX_BODY).await
}

async fn http_limited(
    url: &str,
    method: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    if !url.starts_with("http://") {
        return Err(format!("{url}: only http:// URLs are supported"));
    }
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let method: hyper::Method = method.parse().map_err(|e| format!("{method}: {e}"))?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header(
            hyper::header::USER_AGENT,
            concat!("ringlb/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or("").to_string(),
        )))
        .map_err(|e| format!("{url}: {e}"))?;
    // No pool: the scaler makes a few requests per interval, and a pooled connection would
    // belong to whichever runtime made it.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("{url}: the body: {e} (at most {max_body} bytes are read)"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_encoded() {
        assert_eq!(encode("sum(rate(x[1m]))"), "sum%28rate%28x%5B1m%5D%29%29");
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("é "), "%C3%A9%20");
    }

    /// Serves one connection with `raw` as the whole response; returns the URL.
    fn serve_once(raw: Vec<u8>) -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&raw);
            }
        });
        format!("http://{a}/x")
    }

    fn get(url: &str, max: usize) -> Result<(u16, String), String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(http_limited(
                url,
                "GET",
                None,
                None,
                Duration::from_secs(5),
                max,
            ))
    }

    #[test]
    fn a_chunk_boundary_inside_a_character_and_chunk_extensions_parse() {
        // "é" is two bytes; the first chunk ends between them. This once panicked.
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;name=x\r\na\xc3\r\n2\r\n\xa9b\r\n0\r\n\r\n";
        assert_eq!(
            get(&serve_once(resp.to_vec()), MAX_BODY),
            Ok((200, "aéb".to_string()))
        );
        assert!(get(&serve_once(b"garbage".to_vec()), MAX_BODY).is_err());
    }

    #[test]
    fn an_oversized_body_is_refused() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{}",
            "x".repeat(5000)
        );
        let e = get(&serve_once(big.clone().into_bytes()), 4096).unwrap_err();
        assert!(e.contains("at most 4096 bytes"), "{e}");
        assert_eq!(
            get(&serve_once(big.into_bytes()), 8192).unwrap().1.len(),
            5000
        );
        // A server that never answers: the timeout, not a hang.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let e = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(http(&url, "GET", None, None, Duration::from_millis(300)))
            .unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
        drop(l);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Whatever a peer answers, a value or an error, never a panic.
            #[test]
            fn http_responses_never_panic(resp in prop::collection::vec(any::<u8>(), 0..300)) {
                let _ = get(&serve_once(resp.clone()), MAX_BODY);
                let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                chunked.extend_from_slice(&resp);
                let _ = get(&serve_once(chunked), MAX_BODY);
            }

            /// Any body, cut into chunks anywhere (inside characters too), reads back whole.
            #[test]
            fn chunked_bodies_reassemble(body in "\\PC{0,100}", cuts in prop::collection::vec(1usize..20, 0..10)) {
                let bytes = body.as_bytes();
                let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                let mut at: usize = 0;
                for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                    let end = at.saturating_add(*c).min(bytes.len());
                    if end > at {
                        wire.extend_from_slice(format!("{:x}\r\n", end - at).as_bytes());
                        wire.extend_from_slice(&bytes[at..end]);
                        wire.extend_from_slice(b"\r\n");
                    }
                    at = end;
                }
                wire.extend_from_slice(b"0\r\n\r\n");
                prop_assert_eq!(get(&serve_once(wire), MAX_BODY), Ok((200, body.clone())));
            }
        }
    }
}
