//! One relay direction's queue of received bytes, waiting to be sent.
//!
//! Owns: [`BufQueue`] (a FIFO of slices threaded through the worker's slice table, so it
//! costs no allocation per chunk) and [`BufLinks`] (the slices, and per relay buffer how far
//! the kernel has filled it and how many slices still point into it).
//! Must not touch: the ring: a buffer leaves here and goes back to the kernel in the caller,
//! which owns the ring.
//!
//! A slice is what one recv completion got: a buffer id, the offset where its bytes start,
//! and their length. With whole buffers each completion fills its own buffer from offset 0;
//! with incremental consumption (IOU_PBUF_RING_INC) the kernel goes on filling one buffer,
//! completion after completion and connection after connection, so a buffer holds several
//! slices, of several connections. Either way a buffer goes back to the kernel once the
//! kernel is done with it (a completion without `BUF_MORE`) and no slice points into it.

/// "No slice" in the links.
const NONE: u32 = u32::MAX;

/// The worker's slices, and what each relay buffer holds.
pub struct BufLinks {
    /// Per slice: its buffer, where its bytes start, how many, the next slice in its queue.
    bid: Vec<u16>,
    off: Vec<u32>,
    len: Vec<u32>,
    next: Vec<u32>,
    /// Slices not in use, as a stack.
    free: Vec<u32>,
    /// Per buffer: slices pointing into it, where the kernel's next bytes will go, and
    /// whether the kernel is still filling it.
    refs: Vec<u32>,
    filled: Vec<u32>,
    kernel: Vec<bool>,
    /// Buffers out of the kernel's ring because slices point into them.
    held: u32,
}

impl BufLinks {
    pub fn new(count: u16) -> BufLinks {
        let n = count as usize;
        // Room for two slices per buffer before the table grows (it grows only past its
        // largest size so far, never per chunk in the steady state).
        BufLinks {
            bid: Vec::with_capacity(2 * n),
            off: Vec::with_capacity(2 * n),
            len: Vec::with_capacity(2 * n),
            next: Vec::with_capacity(2 * n),
            free: Vec::with_capacity(2 * n),
            refs: vec![0; n],
            filled: vec![0; n],
            kernel: vec![false; n],
            held: 0,
        }
    }

    /// Buffers held by slices now (out of the kernel's ring).
    pub fn held(&self) -> u32 {
        self.held
    }

    /// A completion put `n` bytes into buffer `bid`; `kernel_keeps`: the kernel goes on
    /// filling it. Returns where the bytes start.
    fn received(&mut self, bid: u16, n: u32, kernel_keeps: bool) -> u32 {
        let b = bid as usize;
        let at = self.filled[b];
        if kernel_keeps {
            self.filled[b] = at + n;
        } else {
            self.filled[b] = 0;
        }
        self.kernel[b] = kernel_keeps;
        at
    }

    /// Whether buffer `bid` can go back to the kernel.
    fn recyclable(&self, bid: u16) -> bool {
        self.refs[bid as usize] == 0 && !self.kernel[bid as usize]
    }

    /// A completion whose bytes nobody will send (its connection is closing): accounts
    /// for them; returns the buffer if it can go back to the kernel now.
    pub fn discard(&mut self, bid: u16, n: u32, kernel_keeps: bool) -> Option<u16> {
        self.received(bid, n, kernel_keeps);
        self.recyclable(bid).then_some(bid)
    }

    fn new_slice(&mut self, bid: u16, off: u32, len: u32) -> u32 {
        let b = bid as usize;
        if self.refs[b] == 0 {
            self.held += 1;
        }
        self.refs[b] += 1;
        match self.free.pop() {
            Some(s) => {
                let i = s as usize;
                (self.bid[i], self.off[i], self.len[i], self.next[i]) = (bid, off, len, NONE);
                s
            }
            None => {
                self.bid.push(bid);
                self.off.push(off);
                self.len.push(len);
                self.next.push(NONE);
                (self.bid.len() - 1) as u32
            }
        }
    }

    /// Frees slice `s`; returns its buffer if that can go back to the kernel now.
    fn drop_slice(&mut self, s: u32) -> Option<u16> {
        let bid = self.bid[s as usize];
        self.free.push(s);
        let b = bid as usize;
        self.refs[b] -= 1;
        if self.refs[b] == 0 {
            self.held -= 1;
        }
        self.recyclable(bid).then_some(bid)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BufQueue {
    head: u32,
    tail: u32,
    queued: u16,
    /// Bytes of the head slice already sent (partial sends).
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
            head: NONE,
            tail: NONE,
            queued: 0,
            offset: 0,
        }
    }

    /// Slices queued.
    pub fn len(&self) -> u16 {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.head == NONE
    }

    /// Appends the `n` bytes a completion put into buffer `bid` (`kernel_keeps`: its
    /// `BUF_MORE` flag).
    ///
    /// Bytes that continue the tail slice in the same buffer (incremental consumption with
    /// no other connection's recv in between: a stream arriving faster than it is sent)
    /// lengthen that slice instead of starting one, so one send takes them all. A send of
    /// that slice already in flight is not disturbed: [`BufQueue::advance`] leaves the rest
    /// of the slice at the head for the next send.
    pub fn push(&mut self, links: &mut BufLinks, bid: u16, n: u32, kernel_keeps: bool) {
        let off = links.received(bid, n, kernel_keeps);
        if self.tail != NONE {
            let t = self.tail as usize;
            if links.bid[t] == bid && links.off[t] + links.len[t] == off {
                links.len[t] += n;
                return;
            }
        }
        let s = links.new_slice(bid, off, n);
        if self.tail == NONE {
            self.head = s;
        } else {
            links.next[self.tail as usize] = s;
        }
        self.tail = s;
        self.queued += 1;
    }

    /// What to send next: the head slice's buffer, the offset into that buffer, and the
    /// bytes left in the slice.
    pub fn front(&self, links: &BufLinks) -> Option<(u16, u32, u32)> {
        (self.head != NONE).then(|| {
            let s = self.head as usize;
            (
                links.bid[s],
                links.off[s] + self.offset,
                links.len[s] - self.offset,
            )
        })
    }

    /// `sent` bytes of the head slice went out. If that finished the slice, it leaves the
    /// queue; returns its buffer if that can go back to the kernel now.
    pub fn advance(&mut self, links: &mut BufLinks, sent: u32) -> Option<u16> {
        let s = self.head;
        debug_assert!(s != NONE);
        self.offset += sent;
        if self.offset < links.len[s as usize] {
            return None;
        }
        self.head = links.next[s as usize];
        if self.head == NONE {
            self.tail = NONE;
        }
        self.queued -= 1;
        self.offset = 0;
        links.drop_slice(s)
    }

    /// Empties the queue, handing each buffer that can go back to the kernel to
    /// `give_back`.
    pub fn clear(&mut self, links: &mut BufLinks, mut give_back: impl FnMut(u16)) {
        let mut s = self.head;
        while s != NONE {
            let next = links.next[s as usize];
            if let Some(bid) = links.drop_slice(s) {
                give_back(bid);
            }
            s = next;
        }
        *self = BufQueue::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fifo_with_partial_sends() {
        let mut links = BufLinks::new(8);
        let mut q = BufQueue::new();
        q.push(&mut links, 3, 100, false);
        q.push(&mut links, 5, 10, false);
        assert_eq!((q.len(), links.held()), (2, 2));
        assert_eq!(q.front(&links), Some((3, 0, 100)));
        assert_eq!(q.advance(&mut links, 60), None);
        assert_eq!(q.front(&links), Some((3, 60, 40)));
        assert_eq!(q.advance(&mut links, 40), Some(3));
        assert_eq!(q.front(&links), Some((5, 0, 10)));
        q.push(&mut links, 1, 7, false);
        let mut back = vec![];
        q.clear(&mut links, |b| back.push(b));
        assert_eq!(back, vec![5, 1]);
        assert!(q.is_empty());
        assert_eq!(links.held(), 0);
    }

    #[test]
    fn incremental_buffers_hold_slices_of_several_queues() {
        let mut links = BufLinks::new(4);
        let (mut a, mut b) = (BufQueue::new(), BufQueue::new());
        // The kernel fills buffer 2: 100 bytes for a, 50 for b, and then 30 more for a, the
        // last of which ends the buffer (no BUF_MORE).
        a.push(&mut links, 2, 100, true);
        b.push(&mut links, 2, 50, true);
        a.push(&mut links, 2, 30, false);
        assert_eq!(a.front(&links), Some((2, 0, 100)));
        assert_eq!(b.front(&links), Some((2, 100, 50)));
        assert_eq!(links.held(), 1);
        assert_eq!(
            a.advance(&mut links, 100),
            None,
            "b and a's second slice still use it"
        );
        assert_eq!(a.front(&links), Some((2, 150, 30)));
        assert_eq!(b.advance(&mut links, 50), None);
        assert_eq!(
            a.advance(&mut links, 30),
            Some(2),
            "the last slice frees the buffer"
        );
        assert_eq!(links.held(), 0);
        // While the kernel still fills a buffer, it never comes back, even with no slice.
        a.push(&mut links, 0, 10, true);
        assert_eq!(a.advance(&mut links, 10), None);
        assert_eq!(links.discard(0, 5, false), Some(0));
    }

    #[test]
    fn contiguous_bytes_join_the_tail_slice_even_while_it_is_being_sent() {
        let mut links = BufLinks::new(4);
        let (mut a, mut b) = (BufQueue::new(), BufQueue::new());
        a.push(&mut links, 1, 100, true);
        // A send of those 100 bytes is in flight when 50 more land right after them.
        assert_eq!(a.front(&links), Some((1, 0, 100)));
        a.push(&mut links, 1, 50, true);
        assert_eq!(a.len(), 1, "one slice");
        assert_eq!(
            a.advance(&mut links, 100),
            None,
            "the rest stays at the head"
        );
        assert_eq!(a.front(&links), Some((1, 100, 50)));
        // Another queue's bytes in between: the next ones cannot join.
        b.push(&mut links, 1, 10, true);
        a.push(&mut links, 1, 20, false);
        assert_eq!(a.len(), 2);
        assert_eq!(a.advance(&mut links, 50), None);
        assert_eq!(a.front(&links), Some((1, 160, 20)));
        assert_eq!(b.advance(&mut links, 10), None);
        assert_eq!(a.advance(&mut links, 20), Some(1));
        assert_eq!(links.held(), 0);
    }

    proptest! {
        /// Any interleaving of completions (whole or incremental) into two queues and of
        /// sends: every byte is sent once, in order per queue, from where the kernel put it;
        /// a buffer comes back exactly once per filling, and only when nothing uses it.
        #[test]
        fn slices_account_for_every_byte(ops in proptest::collection::vec((0u8..4, 1u32..2000, any::<bool>()), 1..200)) {
            let mut links = BufLinks::new(4);
            let mut qs = [BufQueue::new(), BufQueue::new()];
            let mut filling: Option<(u16, u32)> = None; // the buffer the kernel fills, and where
            let mut spare: Vec<u16> = vec![0, 1, 2, 3];
            let mut expected: [std::collections::VecDeque<(u16, u32, u32)>; 2] = Default::default();
            for (op, n, keeps) in ops {
                let q = (op & 1) as usize;
                if op < 2 {
                    // A completion for queue q.
                    let (bid, at) = match filling {
                        Some(f) => f,
                        None => match spare.pop() { Some(b) => (b, 0), None => continue },
                    };
                    qs[q].push(&mut links, bid, n, keeps);
                    // Bytes continuing the queue's last slice in its buffer join it.
                    match expected[q].back_mut() {
                        Some((b, o, l)) if *b == bid && *o + *l == at => *l += n,
                        _ => expected[q].push_back((bid, at, n)),
                    }
                    filling = keeps.then_some((bid, at + n));
                } else if let Some((bid, off, len)) = qs[q].front(&links) {
                    let (ebid, eoff, elen) = expected[q].front().copied().unwrap();
                    prop_assert_eq!((bid, off + len), (ebid, eoff + elen));
                    let sent = len.min(n);
                    if let Some(back) = qs[q].advance(&mut links, sent) {
                        prop_assert!(filling.is_none_or(|(f, _)| f != back));
                        prop_assert!(!spare.contains(&back));
                        spare.push(back);
                    }
                    if sent == len { expected[q].pop_front(); }
                }
            }
            for q in &mut qs {
                q.clear(&mut links, |b| spare.push(b));
            }
            prop_assert_eq!(links.held(), 0);
            let in_kernel = filling.is_some() as usize;
            prop_assert_eq!(spare.len() + in_kernel, 4);
        }
    }
}
