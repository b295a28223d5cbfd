//! The MySQL (and MariaDB) probe (HAProxy's `mysql-check`): the server speaks first, with a
//! handshake of protocol version 10, or an error packet ("Host is blocked", "Too many
//! connections") whose message the check reports.
//!
//! With `username`: a login as that user without a password (HandshakeResponse41), which must
//! be answered OK, then COM_QUIT. Without it, the check closes after the greeting, which
//! MySQL counts as an aborted connect: a server with a small `max_connect_errors` may end up
//! blocking the balancer's address, as it does with HAProxy. Give `username` (a user created
//! for the check, with no rights) to avoid that.

use super::Dialogue;
use super::dialogue::{Parsed, shown};
use crate::config::HealthConfig;
use tokio::io::{AsyncRead, AsyncWrite};

/// One packet from the front of `buf`: (sequence id, payload).
pub fn parse_packet(buf: &[u8]) -> Parsed<(u8, Vec<u8>)> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], 0]) as usize;
    if len == 0 {
        return Err(format!("not a MySQL packet: {:?}", shown(&buf[..4])));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some(((buf[3], buf[4..4 + len].to_vec()), 4 + len)))
}

/// The text of an ERR packet's payload (0xff, code, optional SQL state, message).
pub fn error_text(p: &[u8]) -> String {
    if p.len() < 3 {
        return "an error packet".into();
    }
    let code = u16::from_le_bytes([p[1], p[2]]);
    let rest = &p[3..];
    let msg = match rest.first() {
        Some(b'#') if rest.len() >= 6 => &rest[6..],
        _ => rest,
    };
    format!("error {code}: {}", String::from_utf8_lossy(msg))
}

/// A HandshakeResponse41 for `user` without a password (sequence id 1).
pub fn login(user: &str) -> Vec<u8> {
    const CLIENT_LONG_PASSWORD: u32 = 1;
    const CLIENT_PROTOCOL_41: u32 = 0x200;
    const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
    let mut p = (CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION)
        .to_le_bytes()
        .to_vec();
    p.extend_from_slice(&(1u32 << 24).to_le_bytes());
    p.push(0x21); // utf8_general_ci
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(0); // no auth data
    let mut out = (p.len() as u32).to_le_bytes()[..3].to_vec();
    out.push(1);
    out.extend(p);
    out
}

pub async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<S>,
    cfg: &HealthConfig,
) -> Result<(), String> {
    let (_, greeting) = d.read_until("a MySQL greeting", parse_packet).await?;
    match greeting.first() {
        Some(10) => {}
        Some(0xff) => return Err(format!("MySQL refused: {}", error_text(&greeting))),
        _ => {
            return Err(format!("not a MySQL greeting: {:?}", shown(&greeting)));
        }
    }
    let Some(user) = &cfg.username else {
        return Ok(());
    };
    d.send(&login(user)).await?;
    let (_, answer) = d.read_until("an answer to the login", parse_packet).await?;
    match answer.first() {
        Some(0) => {
            // COM_QUIT.
            let _ = d.send(&[1, 0, 0, 0, 1]).await;
            Ok(())
        }
        Some(0xff) => Err(format!(
            "MySQL refused the login of {user:?}: {}",
            error_text(&answer)
        )),
        Some(0xfe) => Err(format!(
            "MySQL asks {user:?} for a password (an auth switch): the check's user must have none"
        )),
        _ => Err(format!("not a MySQL answer: {:?}", shown(&answer))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packets() {
        let err = b"\x17\0\0\0\xff\x10\x04#08S01Too many conns";
        let ((seq, p), used) = parse_packet(err).unwrap().unwrap();
        assert_eq!((seq, used), (0, 27));
        assert_eq!(error_text(&p), "error 1040: Too many conns");
        assert_eq!(login("u")[3], 1);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some(((_, p), used))) = parse_packet(&b) {
                prop_assert!(used <= b.len());
                let _ = error_text(&p);
            }
        }
    }
}
