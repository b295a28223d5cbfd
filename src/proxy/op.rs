//! What a completion is about: the kinds of request a worker puts on its ring, and the
//! 64-bit user data that carries a request's connection slot, its generation and its kind
//! back with the completion.
//!
//! Owns: the encoding alone. Must not touch: connections (the table hands out user data)
//! or the ring.

/// What a completion is about: the low byte of its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Tick = 2,
    /// recv on the client (the to-backend direction's source)
    RecvClient = 3,
    /// recv on the backend (the to-client direction's source)
    RecvBackend = 4,
    /// send to the backend
    SendBackend = 5,
    /// send to the client
    SendClient = 6,
    /// a poll for the client's first bytes (SNI inspection)
    Inspect = 7,
    /// the inspection's linked timeout
    InspectTimeout = 8,
    Connect = 9,
    ConnectTimeout = 10,
    Cancel = 11,
    /// close of a connection's descriptor: not tracked
    Close = 12,
    /// the PROXY protocol header sent to the backend
    Header = 13,
    /// cancel of a listener's accept: not tracked
    AcceptCancel = 14,
    /// this worker's doorbell rang (a slot for one of its queued clients): not tracked
    Doorbell = 15,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        Some(match v {
            1 => Accept,
            2 => Tick,
            3 => RecvClient,
            4 => RecvBackend,
            5 => SendBackend,
            6 => SendClient,
            7 => Inspect,
            8 => InspectTimeout,
            9 => Connect,
            10 => ConnectTimeout,
            11 => Cancel,
            12 => Close,
            13 => Header,
            14 => AcceptCancel,
            15 => Doorbell,
            _ => return None,
        })
    }
    /// Whether a request of this kind names a connection and is counted in its in-flight
    /// requests (accepts, the tick and closes are not).
    pub fn tracked(self) -> bool {
        !matches!(
            self,
            Op::Accept | Op::Tick | Op::Close | Op::AcceptCancel | Op::Doorbell
        )
    }
}

/// User data: slot (32 bits) | generation (16 bits) | unused (8) | op (8).
#[inline]
pub fn user_data(slot: u32, gen_: u16, op: Op) -> u64 {
    (slot as u64) << 32 | (gen_ as u64) << 16 | op as u64
}

#[inline]
pub fn decode(ud: u64) -> (u32, u16, u8) {
    ((ud >> 32) as u32, (ud >> 16) as u16, ud as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(123_456, 65_000, Op::SendClient);
        assert_eq!(decode(ud), (123_456, 65_000, Op::SendClient as u8));
        for v in 0..=255u8 {
            if let Some(op) = Op::from_u8(v) {
                assert_eq!(op as u8, v);
            }
        }
    }
}
