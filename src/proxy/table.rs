//! The worker's connection table: a slab of connections and their generations.
//!
//! Owns: slot allocation and release, the user data of each request (encoded by
//! [`super::op`]: slot | generation | op), the one checked lookup of a completion's connection, and the count of requests in flight per
//! connection: [`ConnTable::submit`] counts one up for every tracked request it names, and
//! [`ConnTable::complete`] counts it down at the request's final completion. A slot is
//! released only when nothing names it any more, so no completion ever finds it reused.
//! Must not touch: the ring or any connection logic.

use super::conn::Conn;
use super::op::{Op, user_data};

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
