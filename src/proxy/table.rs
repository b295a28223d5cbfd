//! The worker's connection table: a slab of connections, their generations, and how a
//! completion's user data names one of them.
//!
//! Owns: slot allocation and release, the user-data encoding (slot | generation | op), the
//! one checked lookup of a completion's connection, and the count of requests in flight per
//! connection: [`ConnTable::submit`] counts one up for every tracked request it names, and
//! [`ConnTable::complete`] counts it down at the request's final completion. A slot is
//! released only when nothing names it any more, so no completion ever finds it reused.
//! Must not touch: the ring or any connection logic.

use super::conn::Conn;

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

/// The live connections of one worker.
#[derive(Default)]
pub struct ConnTable {
    conns: Vec<Option<Conn>>,
    gens: Vec<u16>,
    free: Vec<u32>,
    live: usize,
}

impl ConnTable {
    /// Connections held now.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Slots ever used (live or free): the range a sweep over all connections walks.
    pub fn capacity(&self) -> usize {
        self.conns.len()
    }

    /// Takes a free slot for `make(generation)`'s connection.
    pub fn insert(&mut self, make: impl FnOnce(u16) -> Conn) -> usize {
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                self.conns.len() - 1
            }
        };
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        self.conns[slot] = Some(make(self.gens[slot]));
        self.live += 1;
        slot
    }

    /// The connection a completion names, if that slot still holds the same generation.
    pub fn lookup(&self, slot: usize, gen_: u16) -> bool {
        matches!(self.conns.get(slot), Some(Some(c)) if c.gen_ == gen_)
    }

    /// A live connection (a slot a completion was checked against, or one just inserted).
    #[inline]
    pub fn get(&mut self, slot: usize) -> &mut Conn {
        self.conns[slot].as_mut().expect("live connection")
    }

    /// A connection, if its slot is live.
    pub fn try_get(&mut self, slot: usize) -> Option<&mut Conn> {
        self.conns.get_mut(slot).and_then(|c| c.as_mut())
    }

    /// The user data of a request about `slot` that is not tracked (a close).
    pub fn ud(&self, slot: usize, op: Op) -> u64 {
        user_data(slot as u32, self.gens[slot], op)
    }

    /// The user data for a tracked request about `slot`, counted in its in-flight requests:
    /// every tracked ring call takes its user data from here.
    #[inline]
    pub fn submit(&mut self, slot: usize, op: Op) -> u64 {
        debug_assert!(op.tracked());
        let ud = user_data(slot as u32, self.gens[slot], op);
        self.get(slot).inflight += 1;
        ud
    }

    /// A tracked request's final completion came in.
    #[inline]
    pub fn complete(&mut self, slot: usize) {
        self.get(slot).inflight -= 1;
    }

    /// Takes the connection out of its slot, which becomes free.
    pub fn remove(&mut self, slot: usize) -> Conn {
        let c = self.conns[slot].take().expect("live connection");
        self.free.push(slot as u32);
        self.live -= 1;
        c
    }
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
