//! The Redis probe: `AUTH` (with `password_file`), `PING` answered `+PONG`, and with `role`
//! the role `INFO replication` reports, so that a pool follows its primary through a
//! failover (a replica promoted by `REPLICAOF NO ONE` or Sentinel).
//!
//! Speaks RESP2: commands as arrays of bulk strings; replies read as one line (`+`, `-`,
//! `:`) or a bulk string (`$`), bounded by `max_read`.

use super::Dialogue;
use super::dialogue::{Parsed, shown};
use crate::config::{HealthConfig, RedisRole, read_secret};
use tokio::io::{AsyncRead, AsyncWrite};

/// One RESP reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Bulk(Vec<u8>),
    Other(String),
}

/// A command as RESP: `*N\r\n` then `$len\r\narg\r\n` per argument.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `buf`: `Ok(None)` while incomplete.
pub fn parse_reply(buf: &[u8]) -> Parsed<Reply> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if eol == 0 {
        return Err("not a Redis reply: an empty line".into());
    }
    let line = String::from_utf8_lossy(&buf[1..eol]).to_string();
    let first = buf[0];
    let reply = match first {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' | b'*' | b'_' => Reply::Other(line),
        b'$' => {
            let len: i64 = line
                .parse()
                .map_err(|_| format!("not a Redis reply: {:?}", shown(&buf[..eol])))?;
            if len < 0 {
                return Ok(Some((Reply::Other("nil".into()), eol + 2)));
            }
            let start = eol + 2;
            let end = start
                .checked_add(len as usize)
                .ok_or("a bulk length out of range")?;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            return Ok(Some((Reply::Bulk(buf[start..end].to_vec()), end + 2)));
        }
        _ => return Err(format!("not a Redis reply: {:?}", shown(&buf[..eol]))),
    };
    Ok(Some((reply, eol + 2)))
}

async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<S>,
    args: &[&[u8]],
) -> Result<Reply, String> {
    d.send(&command(args)).await?;
    Ok(d.read_until("a Redis reply", parse_reply).await?)
}

pub async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<S>,
    cfg: &HealthConfig,
) -> Result<(), String> {
    if let Some(file) = &cfg.password_file {
        let password = read_secret(file)?;
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = &cfg.username {
            args.push(u.as_bytes());
        }
        args.push(password.as_bytes());
        match call(d, &args).await? {
            Reply::Simple(s) if s == "OK" => {}
            // The server's own words; never the password.
            Reply::Error(e) => return Err(format!("AUTH refused: {e}")),
            other => return Err(format!("AUTH answered {other:?}")),
        }
    }
    match call(d, &[b"PING"]).await? {
        Reply::Simple(s) if s == "PONG" => {}
        Reply::Error(e) => return Err(format!("PING answered an error: {e}")),
        other => return Err(format!("PING answered {other:?}, expected +PONG")),
    }
    let Some(want) = cfg.role else {
        return Ok(());
    };
    let info = match call(d, &[b"INFO", b"replication"]).await? {
        Reply::Bulk(b) => String::from_utf8_lossy(&b).to_string(),
        Reply::Error(e) => return Err(format!("INFO replication answered an error: {e}")),
        other => return Err(format!("INFO replication answered {other:?}")),
    };
    let role = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("role:"))
        .unwrap_or("(none)");
    let wanted = match want {
        RedisRole::Master => "master",
        RedisRole::Replica => "slave",
    };
    if role == wanted {
        Ok(())
    } else {
        Err(format!("role:{role}, expected role:{wanted}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply(b"+PONG\r\nrest").unwrap(),
            Some((Reply::Simple("PONG".into()), 7))
        );
        assert_eq!(parse_reply(b"$5\r\nhel").unwrap(), None);
        assert_eq!(
            parse_reply(b"$5\r\nhello\r\n").unwrap(),
            Some((Reply::Bulk(b"hello".to_vec()), 11))
        );
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_reply(b"$99999999999999999999\r\n").is_err());
        assert_eq!(command(&[b"PING"]), b"*1\r\n$4\r\nPING\r\n");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, used))) = parse_reply(&b) {
                prop_assert!(used <= b.len());
            }
        }
    }
}
