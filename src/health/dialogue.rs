//! A health check's conversation with a backend: send bytes, then wait until what came back
//! holds what is expected, reading no more than `max_read` bytes for it.
//!
//! Owns: the read buffer of one check and the `send_expect` steps. What an expect matched
//! (and everything before it) is consumed; the rest waits for the next expect, as in
//! HAProxy's `tcp-check`.

use crate::config::{Expect, StepConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a parser of the read buffer says: not yet (`None`), or a value and the bytes it used.
pub type Parsed<T> = Result<Option<(T, usize)>, String>;

/// Why a conversation ended without what was expected. Typed because the probes tell the
/// cases apart (a peer that answered something and closed is "not an HTTP response"; one
/// that closed in silence is not); each probe's verdict is its text.
#[derive(Debug, thiserror::Error)]
pub enum DialogueError {
    #[error("send: {0}")]
    Send(std::io::Error),
    #[error("read, waiting for {what}: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("closed without answering, expected {what}")]
    ClosedSilent { what: String },
    #[error("closed after {got}, expected {what}")]
    ClosedAfter { got: String, what: String },
    #[error("{read} bytes read without {what} (max_read); got {got}")]
    TooLong {
        read: usize,
        what: String,
        got: String,
    },
    /// The parser of the answer refused it.
    #[error("{0}")]
    Malformed(String),
}

/// The probes' verdicts are text: `?` turns a dialogue's error into its message.
impl From<DialogueError> for String {
    fn from(e: DialogueError) -> String {
        e.to_string()
    }
}

pub struct Dialogue<S> {
    stream: S,
    buf: Vec<u8>,
    max_read: usize,
}

/// A compiled expect.
pub enum Matcher {
    Bytes(Vec<u8>),
    Regex(regex::bytes::Regex),
}

impl Matcher {
    pub fn compile(e: &Expect) -> Result<Matcher, String> {
        Ok(match e {
            Expect::Bytes(b) => Matcher::Bytes(b.clone()),
            Expect::Regex(r) => Matcher::Regex(
                regex::bytes::RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("expect_regex {r:?}: {e}"))?,
            ),
        })
    }
    /// Where the first match ends in `buf`.
    fn find(&self, buf: &[u8]) -> Option<usize> {
        match self {
            Matcher::Bytes(b) => buf
                .windows(b.len())
                .position(|w| w == b)
                .map(|i| i + b.len()),
            Matcher::Regex(r) => r.find(buf).map(|m| m.end()),
        }
    }
    fn describe(&self) -> String {
        match self {
            Matcher::Bytes(b) => format!("{:?}", shown(b)),
            Matcher::Regex(r) => format!("/{}/", r.as_str()),
        }
    }
}

/// Bytes as readable text for a check's error: escaped, cut at 80 characters.
pub fn shown(b: &[u8]) -> String {
    let text: String = b.escape_ascii().to_string();
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(80).collect();
        format!("{cut}...")
    } else {
        text
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Dialogue<S> {
    pub fn new(stream: S, max_read: usize) -> Dialogue<S> {
        Dialogue {
            stream,
            buf: Vec::new(),
            max_read: max_read.max(1),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), DialogueError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(DialogueError::Send)
    }

    /// Reads until `parse` finds what it needs in the unconsumed bytes (it returns the value
    /// and how many bytes it used), the peer closes, or `max_read` bytes have come for it.
    pub async fn read_until<T>(
        &mut self,
        what: &str,
        mut parse: impl FnMut(&[u8]) -> Parsed<T>,
    ) -> Result<T, DialogueError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((v, used)) = parse(&self.buf).map_err(DialogueError::Malformed)? {
                self.buf.drain(..used.min(self.buf.len()));
                return Ok(v);
            }
            if self.buf.len() >= self.max_read {
                return Err(DialogueError::TooLong {
                    read: self.buf.len(),
                    what: what.to_string(),
                    got: format!("{:?}", shown(&self.buf)),
                });
            }
            let room = (self.max_read - self.buf.len()).min(chunk.len());
            let n = self
                .stream
                .read(&mut chunk[..room])
                .await
                .map_err(|source| DialogueError::Read {
                    what: what.to_string(),
                    source,
                })?;
            if n == 0 {
                let what = what.to_string();
                return Err(if self.buf.is_empty() {
                    DialogueError::ClosedSilent { what }
                } else {
                    DialogueError::ClosedAfter {
                        got: format!("{:?}", shown(&self.buf)),
                        what,
                    }
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits for a match; consumes up to its end.
    pub async fn expect(&mut self, m: &Matcher) -> Result<(), DialogueError> {
        let what = m.describe();
        self.read_until(&what, |buf| Ok(m.find(buf).map(|end| ((), end))))
            .await
    }

    /// Reads exactly `n` bytes.
    pub async fn take(&mut self, n: usize, what: &str) -> Result<Vec<u8>, DialogueError> {
        self.read_until(what, |buf| {
            Ok((buf.len() >= n).then(|| (buf[..n].to_vec(), n)))
        })
        .await
    }
}

/// Runs a `send_expect` check's steps in order.
pub async fn run_steps<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<S>,
    steps: &[StepConfig],
) -> Result<(), String> {
    for (i, step) in steps.iter().enumerate() {
        let (send, expect) = step.decode().map_err(|e| format!("step {i}: {e}"))?;
        if let Some(bytes) = send {
            d.send(&bytes).await.map_err(|e| format!("step {i}: {e}"))?;
        }
        if let Some(e) = expect {
            let m = Matcher::compile(&e)?;
            d.expect(&m).await.map_err(|e| format!("step {i}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn step(send: &str, expect: &str) -> StepConfig {
        StepConfig {
            send: (!send.is_empty()).then(|| send.to_string()),
            expect: (!expect.is_empty()).then(|| expect.to_string()),
            ..Default::default()
        }
    }

    /// Runs `steps` against a peer that answers `answer` to whatever comes.
    async fn against(
        answer: &'static [u8],
        steps: Vec<StepConfig>,
        max: usize,
    ) -> Result<(), String> {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut sink = [0u8; 64];
            let _ = b.read(&mut sink).await;
            let _ = b.write_all(answer).await;
        });
        run_steps(&mut Dialogue::new(a, max), &steps).await
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn steps_match_consume_and_fail_clearly() {
        let rt = rt();
        let ok = rt.block_on(against(b"+PONG\r\n", vec![step("PING\r\n", "+PONG")], 1024));
        assert_eq!(ok, Ok(()));
        // What an expect matched is consumed: a second "+PONG" is not there.
        let twice = rt.block_on(against(
            b"+PONG\r\n",
            vec![step("PING\r\n", "+PONG"), step("", "+PONG")],
            1024,
        ));
        assert!(twice.unwrap_err().contains("closed after"), "consumed");
        let wrong = rt.block_on(against(
            b"-ERR no\r\n",
            vec![step("PING\r\n", "+PONG")],
            1024,
        ));
        assert!(wrong.unwrap_err().contains("-ERR no"));
        let bounded = rt.block_on(against(&[b'x'; 4000], vec![step("hi", "+PONG")], 100));
        assert!(bounded.unwrap_err().contains("100 bytes read without"));
        let regex = StepConfig {
            send: Some("INFO\r\n".into()),
            expect_regex: Some(r"role:(master|slave)".into()),
            ..Default::default()
        };
        assert_eq!(
            rt.block_on(against(b"$20\r\nrole:master\r\n", vec![regex], 64)),
            Ok(())
        );
    }

    proptest! {
        /// Whatever a peer answers, in whatever pieces, the check ends with a verdict (no
        /// panic, no read past max_read), and passes exactly when the answer holds the
        /// expected bytes within the bound.
        #[test]
        fn any_answer_gets_a_verdict(answer in proptest::collection::vec(any::<u8>(), 0..300),
                                     needle in proptest::collection::vec(any::<u8>(), 1..6),
                                     max in 1usize..400) {
            let m = Matcher::Bytes(needle.clone());
            let (a, mut b) = tokio::io::duplex(64);
            let rt = rt();
            let got = rt.block_on(async {
                let answer2 = answer.clone();
                tokio::spawn(async move { for c in answer2.chunks(7) { let _ = b.write_all(c).await; } });
                Dialogue::new(a, max).expect(&m).await
            });
            let first_end = answer.windows(needle.len())
                .position(|w| w == needle.as_slice())
                .map(|i| i + needle.len());
            prop_assert_eq!(got.is_ok(), first_end.is_some_and(|end| end <= max), "{:?}", got);
        }
    }
}
