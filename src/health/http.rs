//! The HTTP probe: a GET, and the status line against `expect_status`.

use super::Dialogue;
use super::dialogue::DialogueError;
use crate::config::{HealthConfig, parse_status_range};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

pub async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<S>,
    target: SocketAddr,
    cfg: &HealthConfig,
) -> Result<(), String> {
    let host = cfg.host.clone().unwrap_or_else(|| target.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringlb-health\r\nConnection: close\r\n\r\n",
        cfg.path
    );
    d.send(req.as_bytes())
        .await
        .map_err(|e| format!("send request: {e}"))?;
    // The status line is all a verdict needs (at most 256 bytes of it are looked at).
    let line = d
        .read_until("an HTTP status line", |buf| {
            let end = buf.iter().position(|&b| b == b'\n');
            Ok(match end {
                Some(i) => Some((buf[..i].to_vec(), i + 1)),
                None if buf.len() >= 256 => Some((buf.to_vec(), buf.len())),
                None => None,
            })
        })
        .await;
    let line = match line {
        Ok(l) => l,
        Err(e @ DialogueError::ClosedAfter { .. }) => {
            return Err(format!("not an HTTP response: {e}"));
        }
        Err(e) => return Err(e.into()),
    };
    let line = String::from_utf8_lossy(&line);
    let line = line.trim_end();
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
    let ranges = parse_status_range(&cfg.expect_status).unwrap_or_else(|_| vec![(200, 399)]);
    if ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)) {
        Ok(())
    } else {
        Err(format!(
            "{} answered {status}, expected {}",
            cfg.path, cfg.expect_status
        ))
    }
}
