//! One relay direction's queue of received buffers, waiting to be sent.
//!
//! Owns: [`BufQueue`] (a FIFO of buffer ids threaded through the worker's per-buffer links,
//! so it costs no allocation and grows as far as the ring has buffers) and [`BufLinks`] (those
//! links, each buffer's byte count, and how many buffers all queues hold).
//! Must not touch: the ring: a buffer leaves a queue here and goes back to the kernel in the
//! caller, which owns the ring.

/// "No buffer" in the links.
const NO_BUF: u16 = u16::MAX;

/// Per relay buffer of one worker: the next buffer in its queue and how many bytes it holds.
pub struct BufLinks {
    next: Vec<u16>,
    len: Vec<u32>,
    /// Buffers held in queues (not in the kernel's ring).
    held: u32,
}

impl BufLinks {
    pub fn new(count: u16) -> BufLinks {
        BufLinks {
            next: vec![NO_BUF; count as usize],
            len: vec![0; count as usize],
            held: 0,
        }
    }
    /// Buffers held in queues now.
    pub fn held(&self) -> u32 {
        self.held
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BufQueue {
    head: u16,
    tail: u16,
    queued: u16,
    /// Bytes of the head buffer already sent (partial sends).
    offset: u32,
}

impl Default for BufQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl BufQueue {
    pub const fn new() -> BufQueue {
        BufQueue {
            head: NO_BUF,
            tail: NO_BUF,
            queued: 0,
            offset: 0,
        }
    }

    pub fn len(&self) -> u16 {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.head == NO_BUF
    }

    /// Appends buffer `bid`, which holds `n` bytes.
    pub fn push(&mut self, links: &mut BufLinks, bid: u16, n: u32) {
        links.next[bid as usize] = NO_BUF;
        links.len[bid as usize] = n;
        links.held += 1;
        if self.tail == NO_BUF {
            self.head = bid;
        } else {
            links.next[self.tail as usize] = bid;
        }
        self.tail = bid;
        self.queued += 1;
    }

    /// What to send next: the head buffer, the offset into it, and the bytes left in it.
    pub fn front(&self, links: &BufLinks) -> Option<(u16, u32, u32)> {
        (self.head != NO_BUF).then(|| {
            let bid = self.head;
            (bid, self.offset, links.len[bid as usize] - self.offset)
        })
    }

    /// `sent` bytes of the head buffer went out; returns the buffer if that finished it (it
    /// has left the queue and is the caller's to hand back to the kernel).
    pub fn advance(&mut self, links: &mut BufLinks, sent: u32) -> Option<u16> {
        let bid = self.head;
        debug_assert!(bid != NO_BUF);
        self.offset += sent;
        if self.offset < links.len[bid as usize] {
            return None;
        }
        self.head = links.next[bid as usize];
        if self.head == NO_BUF {
            self.tail = NO_BUF;
        }
        self.queued -= 1;
        self.offset = 0;
        links.held -= 1;
        Some(bid)
    }

    /// Empties the queue, handing each buffer to `give_back`.
    pub fn clear(&mut self, links: &mut BufLinks, mut give_back: impl FnMut(u16)) {
        let mut bid = self.head;
        while bid != NO_BUF {
            let next = links.next[bid as usize];
            links.held -= 1;
            give_back(bid);
            bid = next;
        }
        *self = BufQueue::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_partial_sends() {
        let mut links = BufLinks::new(8);
        let mut q = BufQueue::new();
        q.push(&mut links, 3, 100);
        q.push(&mut links, 5, 10);
        assert_eq!((q.len(), links.held()), (2, 2));
        assert_eq!(q.front(&links), Some((3, 0, 100)));
        assert_eq!(q.advance(&mut links, 60), None);
        assert_eq!(q.front(&links), Some((3, 60, 40)));
        assert_eq!(q.advance(&mut links, 40), Some(3));
        assert_eq!(q.front(&links), Some((5, 0, 10)));
        q.push(&mut links, 1, 7);
        let mut back = vec![];
        q.clear(&mut links, |b| back.push(b));
        assert_eq!(back, vec![5, 1]);
        assert!(q.is_empty());
        assert_eq!(links.held(), 0);
    }
}
