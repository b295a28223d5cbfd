//! The PostgreSQL probe, as a PostgreSQL client begins (HAProxy's `pgsql-check`).
//!
//! Without `username`: an SSLRequest, which a PostgreSQL server answers with one byte, `S`
//! or `N`, before any authentication. With `username`: a StartupMessage (protocol 3.0), which
//! the server answers with an authentication request (`R`) when it accepts connections, or
//! an ErrorResponse (`E`) whose message says why not ("the database system is starting up",
//! "no pg_hba.conf entry", "too many clients"): the check fails with that message. The check
//! then sends Terminate, so the server logs no broken connection.
//!
//! Which server is the primary is not this check's business: point an `http` check at
//! Patroni's REST API (`GET /primary` on port 8008) for that.

use super::Dialogue;
use super::dialogue::{Parsed, shown};
use crate::config::HealthConfig;
use tokio::io::{AsyncRead, AsyncWrite};

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// Terminate: 'X', length 4.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// A StartupMessage for protocol 3.0.
pub fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in [
        ("user", user),
        ("database", database),
        ("application_name", "ringlb-health"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// The first message of a server's answer to a StartupMessage: its type byte and body.
pub fn parse_message(buf: &[u8]) -> Parsed<(u8, Vec<u8>)> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=1 << 20).contains(&len) {
        return Err(format!("not a PostgreSQL message: {:?}", shown(&buf[..5])));
    }
    if buf.len() < 1 + len {
        return Ok(None);
    }
    Ok(Some(((buf[0], buf[5..1 + len].to_vec()), 1 + len)))
}

/// The human part of an ErrorResponse: its severity, code and message fields.
pub fn error_text(body: &[u8]) -> String {
    let mut parts = Vec::new();
    for field in body.split(|&b| b == 0) {
        if let Some((&t, v)) = field.split_first()
            && matches!(t, b'S' | b'C' | b'M')
        {
            parts.push(String::from_utf8_lossy(v).to_string());
        }
    }
    parts.join(" ")
}

pub async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<S>,
    cfg: &HealthConfig,
) -> Result<(), String> {
    let Some(user) = &cfg.username else {
        d.send(&SSL_REQUEST).await?;
        let answer = d.take(1, "an answer to an SSLRequest").await?;
        return match answer[0] {
            b'S' | b'N' => Ok(()),
            other => Err(format!(
                "answered an SSLRequest with {:?}, not S or N: not PostgreSQL",
                shown(&[other])
            )),
        };
    };
    let database = cfg.database.as_deref().unwrap_or(user);
    d.send(&startup_message(user, database)).await?;
    let (kind, body) = d
        .read_until("an answer to a StartupMessage", parse_message)
        .await?;
    match kind {
        b'R' => {
            let _ = d.send(&TERMINATE).await;
            Ok(())
        }
        b'E' => Err(format!("PostgreSQL refused: {}", error_text(&body))),
        other => Err(format!(
            "answered a StartupMessage with message type {:?}: not PostgreSQL",
            shown(&[other])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages() {
        let m = startup_message("u", "db");
        assert_eq!(
            u32::from_be_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        let err = b"E\0\0\0\x1dSFATAL\0C57P03\0Mstarting\0\0";
        let ((t, body), used) = parse_message(err).unwrap().unwrap();
        assert_eq!((t, used), (b'E', 30));
        assert_eq!(error_text(&body), "FATAL 57P03 starting");
        assert!(parse_message(b"HTTP/1.1 400").is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, used))) = parse_message(&b) {
                prop_assert!(used <= b.len());
            }
        }
    }
}
