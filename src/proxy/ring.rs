//! The io_uring ring of one worker and the relay buffers the kernel fills: the crate's only
//! `unsafe` code besides `sys.rs`.
//!
//! Owns: the `IoUring` instance, a kernel-provided buffer ring (IORING_REGISTER_PBUF_RING)
//! with its buffer memory, and every piece of memory a submission points at. Every method is
//! safe because the memory behind an SQE is owned here:
//! - relay buffers live in one mapping that outlives the ring (dropped after it), and the
//!   kernel only gets a buffer back through [`Ring::recycle`];
//! - a connect's address and timeout, and a PROXY header, are copied into storage owned here;
//!   the kernel consumes address and timespec at submission (IORING_FEAT_SUBMIT_STABLE,
//!   checked at setup), and a header slot lives until the ring is dropped;
//! - the registered file table the sockets of long connections are mirrored into (see
//!   [`Ring::adopt`]), and the array a table update reads its descriptor from.
//!
//! Must not touch: connection logic. It knows file descriptors, buffer ids and user data, not
//! what they mean.
#![allow(unsafe_code)]

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// Buffer group id of the relay buffers.
const BGID: u16 = 0;
/// Connects (with their timeouts) that can be staged between two submissions.
const STAGED: usize = 256;
/// Largest PROXY protocol header (v1 is at most 107 bytes, v2 with IPv6 52).
pub const HEADER_MAX: usize = 112;
/// Header slots are allocated in chunks of this many, on first use.
const HEADER_CHUNK: usize = 64;

/// The few io_uring ABI values the crate does not export (include/uapi/linux/io_uring.h).
mod abi {
    pub const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
    pub const IORING_ENTER_REGISTERED_RING: u32 = 1 << 4;
    pub const IORING_ENTER_NO_IOWAIT: u32 = 1 << 7;
    pub const IORING_REGISTER_RING_FDS: u32 = 20;
    /// Buffer-ring registration flag: buffers consumed incrementally (Linux 6.12+).
    pub const IOU_PBUF_RING_INC: u16 = 2;
    /// Completion flag: the kernel keeps using this (incremental) buffer.
    pub const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;
}

/// Whether io_uring feature `name` may be used: not listed in `RINGLB_IO_URING_OFF`
/// (comma-separated: `recv_cap`, `buf_inc`, `fixed_files`), for comparisons and for running the tests on
/// the fallback paths a kernel without the feature takes.
pub fn feature_wanted(name: &str) -> bool {
    let off = std::env::var("RINGLB_IO_URING_OFF").unwrap_or_default();
    !off.split(',').any(|f| f.trim() == name)
}

/// `struct io_uring_rsrc_update`, as IORING_REGISTER_RING_FDS takes it.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// One completion, copied out of the CQ.
#[derive(Debug, Clone, Copy)]
pub struct Cqe {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Cqe {
    /// More completions will follow for this (multishot) request.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
    /// The provided buffer this completion filled.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
    /// The kernel keeps filling this buffer (incremental consumption): it must not be
    /// recycled yet, and the next completion naming it continues where this one ended.
    pub fn buf_more(&self) -> bool {
        self.flags & abi::IORING_CQE_F_BUF_MORE != 0
    }
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, populate: bool) -> io::Result<Mapping> {
        let flags =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: an anonymous mapping with no address hint touches no existing memory; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr as *mut u8,
            len,
        })
    }
}

impl Drop for Ring {
    /// A ring dropped with SQEs never submitted lost them: whatever they were (a close, a
    /// shutdown) never happens. Debug builds stop on it; a worker leaving its loop calls
    /// [`Ring::submit_all`] first.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.debug_assert_submitted();
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped once, here.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// A connect's address and timeout, kept until the SQE that points at them is submitted.
#[derive(Clone, Copy)]
struct Staged {
    addr: libc::sockaddr_storage,
    timeout: types::Timespec,
}

pub struct Ring {
    // Field order is drop order: the ring goes first, so the kernel has let go of the
    // buffers and header slots before they are unmapped and freed.
    uring: IoUring,
    /// The ring of `io_uring_buf` entries the kernel takes buffers from.
    entries: Mapping,
    /// The buffers themselves: `count` × `size` bytes, pre-faulted.
    data: Mapping,
    count: u16,
    size: u32,
    /// Our tail of the buffer ring; published to the kernel by [`Ring::commit`].
    tail: u16,
    published: u16,
    staged: Box<[Staged; STAGED]>,
    nstaged: usize,
    tick: Box<types::Timespec>,
    headers: Vec<Box<[[u8; HEADER_MAX]; HEADER_CHUNK]>>,
    /// What `io_uring_enter` is called on: the ring's index among the thread's registered
    /// rings (IORING_REGISTER_RING_FDS, which spares the kernel an fd lookup per call), or
    /// the plain descriptor where registration is unavailable.
    enter_fd: i32,
    /// Flags added to every waiting enter: GETEVENTS, REGISTERED_RING when registered, and
    /// NO_IOWAIT where the kernel has it (an idle worker is waiting for the network, not
    /// for a disk; without it every worker's core shows as 100% iowait).
    enter_flags: u32,
    /// `busy_poll`, in nanoseconds (0: sleep at once).
    busy_poll_ns: u64,
    /// The kernel can cap the bytes one arming of a multishot recv takes (Linux 6.17+).
    recv_capped: bool,
    /// Buffers are consumed incrementally (IOU_PBUF_RING_INC, Linux 6.12+).
    incremental: bool,
    /// The fixed-file mirror (see [`Ring::adopt`]): `mirror[fd]` is 1 while descriptor `fd`
    /// also sits at index `fd` of the ring's registered file table. Empty when the table
    /// could not be registered (or `fixed_files` is off).
    mirror: Vec<u8>,
    /// Where a FILES_UPDATE reads the descriptor it installs: `fds[fd] == fd`, written
    /// before the SQE is pushed and stable (never moved) until it is submitted.
    mirror_fds: Box<[RawFd]>,
}

/// Offset of `optlen` (a union with `file_index`) in a 64-byte SQE: for a multishot recv,
/// the total bytes it may take before it ends (include/uapi/linux/io_uring.h).
const SQE_OPTLEN: usize = 44;

/// Sets a multishot recv's byte cap in its SQE.
fn set_optlen(sqe: &mut squeue::Entry, v: u32) {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the 64-byte `io_uring_sqe`, so it is
    // 64 plain bytes, and bytes 44..48 are the `optlen` / `file_index` union.
    let raw = unsafe { &mut *(sqe as *mut squeue::Entry as *mut [u8; 64]) };
    raw[SQE_OPTLEN..SQE_OPTLEN + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Offset of `ioprio` in a 64-byte SQE: for an accept, its `IORING_ACCEPT_*` flags.
const SQE_IOPRIO: usize = 2;

/// include/uapi/linux/io_uring.h (the crate does not export its `sys` constants).
const IORING_ACCEPT_DONTWAIT: u16 = 1 << 1;

/// Builds an SQE on socket `$fd`: on its fixed-file mirror when `$fixed` (see
/// [`Ring::adopt`]), else on the descriptor (`$t` is a `types::Fixed` or a `types::Fd` in
/// `$build`).
macro_rules! on_socket {
    ($fixed:expr, $fd:expr, |$t:ident| $build:expr) => {
        if $fixed {
            let $t = types::Fixed($fd as u32);
            $build
        } else {
            let $t = types::Fd($fd);
            $build
        }
    };
}

/// Sets an SQE's `ioprio` field (an accept's flags).
fn set_ioprio(sqe: &mut squeue::Entry, v: u16) {
    // SAFETY: as in `set_optlen`: 64 plain bytes, and bytes 2..4 are the u16 `ioprio`.
    let raw = unsafe { &mut *(sqe as *mut squeue::Entry as *mut [u8; 64]) };
    raw[SQE_IOPRIO..SQE_IOPRIO + 2].copy_from_slice(&v.to_ne_bytes());
}

impl Ring {
    /// A ring of `sq_entries` with `count` relay buffers of `size` bytes (`count` a power of
    /// two). Uses DEFER_TASKRUN + SINGLE_ISSUER where the kernel has them (the ring is only
    /// ever used by the thread that made it).
    ///
    /// `files` sizes the registered file table the ring's sockets are mirrored into (see
    /// [`Ring::adopt`]); 0 registers none.
    pub fn new(sq_entries: u32, count: u16, size: u32, files: u32) -> io::Result<Ring> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(sq_entries * 4)
            .build(sq_entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(sq_entries * 4)
                    .build(sq_entries)
            })?;
        if !uring.params().is_feature_submit_stable() || !uring.params().is_feature_fast_poll() {
            return Err(io::Error::other(
                "this kernel's io_uring lacks SUBMIT_STABLE or FAST_POLL (Linux 5.7+ needed; 6.1+ advised)",
            ));
        }
        let entries_len = (count as usize * std::mem::size_of::<types::BufRingEntry>()).max(4096);
        let entries = Mapping::new(entries_len, false)?;
        // Pre-fault: the buffer ring is FIFO, so every buffer is touched eventually; faulting
        // them in now keeps idle RSS from creeping up by a page per connection later.
        let data = Mapping::new(count as usize * size as usize, true)?;
        let raw = uring.as_raw_fd();
        let mut ring = Ring {
            uring,
            entries,
            data,
            count,
            size,
            tail: 0,
            published: 0,
            staged: Box::new(
                [Staged {
                    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
                    addr: unsafe { std::mem::zeroed() },
                    timeout: types::Timespec::new(),
                }; STAGED],
            ),
            nstaged: 0,
            tick: Box::new(types::Timespec::new()),
            headers: Vec::new(),
            enter_fd: raw,
            enter_flags: abi::IORING_ENTER_GETEVENTS,
            busy_poll_ns: 0,
            recv_capped: false,
            incremental: false,
            mirror: Vec::new(),
            mirror_fds: Box::new([]),
        };
        // SAFETY: the entries mapping is page-aligned, holds `count` entries, and lives in
        // `ring` (dropped after the IoUring, which unregisters the group with it).
        unsafe {
            ring.uring.submitter().register_buf_ring_with_flags(
                ring.entries.ptr as u64,
                count,
                BGID,
                0,
            )?;
        }
        for bid in 0..count {
            ring.recycle(bid);
        }
        ring.commit();
        // Registered for the calling thread only, which is the worker that will use it
        // (Ring::new runs on the worker's own thread).
        let mut update = RsrcUpdate {
            offset: u32::MAX,
            resv: 0,
            data: raw as u64,
        };
        // SAFETY: IORING_REGISTER_RING_FDS reads and writes one io_uring_rsrc_update, which
        // `update` is, for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                raw,
                abi::IORING_REGISTER_RING_FDS,
                &mut update as *mut RsrcUpdate,
                1,
            )
        };
        if r == 1 {
            ring.enter_fd = update.offset as i32;
            ring.enter_flags |= abi::IORING_ENTER_REGISTERED_RING;
        }
        if ring.uring.params().is_feature_no_iowait() {
            ring.enter_flags |= abi::IORING_ENTER_NO_IOWAIT;
        }
        // RINGLB_RECV_CAP=0 turns the cap off (to compare, or on a kernel that misbehaves).
        let wanted = std::env::var("RINGLB_RECV_CAP").map_or(true, |v| v != "0")
            && feature_wanted("recv_cap");
        ring.recv_capped = wanted && ring.probe_recv_cap();
        // Incremental consumption, once the probes (which recycle whole buffers) are done:
        // the group is registered again with the flag, and filled again.
        if feature_wanted("buf_inc") {
            ring.incremental = ring.reregister_incremental();
        }
        if files > 0
            && feature_wanted("fixed_files")
            && ring.uring.submitter().register_files_sparse(files).is_ok()
        {
            ring.mirror = vec![0; files as usize];
            ring.mirror_fds = (0..files as RawFd).collect();
        }
        Ok(ring)
    }

    /// Registers the buffer group again, with IOU_PBUF_RING_INC: a recv takes only the bytes
    /// it got from a buffer, and the next recv (of any connection) goes on in the same
    /// buffer. Falls back to whole buffers where the kernel refuses the flag (before 6.12).
    fn reregister_incremental(&mut self) -> bool {
        if self.uring.submitter().unregister_buf_ring(BGID).is_err() {
            return false;
        }
        // The kernel starts the new group at head 0: the tail starts over too.
        self.tail = 0;
        self.published = 0;
        let register = |ring: &mut Ring, flags: u16| {
            // SAFETY: as at the first registration: the entries mapping is page-aligned,
            // holds `count` entries, and lives as long as the ring.
            unsafe {
                ring.uring.submitter().register_buf_ring_with_flags(
                    ring.entries.ptr as u64,
                    ring.count,
                    BGID,
                    flags,
                )
            }
        };
        let inc = register(self, abi::IOU_PBUF_RING_INC).is_ok();
        if !inc && register(self, 0).is_err() {
            // Cannot happen (the same call worked moments ago); without a group every recv
            // would fail, so say so loudly.
            tracing::error!("io_uring: cannot register the relay buffers again");
        }
        for bid in 0..self.count {
            self.recycle(bid);
        }
        self.commit();
        inc
    }

    /// Whether buffers are consumed incrementally (see [`Cqe::buf_more`]).
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// Whether sockets are mirrored into a registered file table (see [`Ring::adopt`]).
    pub fn fixed_files(&self) -> bool {
        !self.mirror.is_empty()
    }

    /// Mirrors descriptor `fd` (if not yet) into the ring's registered file table, at index `fd`
    /// (IORING_OP_FILES_UPDATE, queued like any request: no syscall of its own). From then
    /// on every request this ring makes on `fd` names the fixed file instead, so the kernel
    /// takes no reference on the file per request (an `fget`/`fput` pair, two atomics on a
    /// table shared by all workers). The descriptor itself stays open for what only a
    /// descriptor can do (getpeername, setsockopt, shutdown(2)); [`Ring::close`] ends both.
    ///
    /// Requests already in flight on the descriptor go on as they are (each holds its own
    /// reference), so a socket may be adopted at any point of its life.
    ///
    /// A descriptor past the table keeps the plain path. An update cannot fail for a valid
    /// socket below the table's size; were it to, its failure completion carries `user_data`
    /// and the requests that follow fail with EBADF, which ends the connection as an error.
    pub fn adopt(&mut self, fd: RawFd, user_data: u64) {
        let Some(flag) = usize::try_from(fd)
            .ok()
            .and_then(|i| self.mirror.get_mut(i))
        else {
            return;
        };
        if *flag != 0 {
            return;
        }
        *flag = 1;
        let ptr = &self.mirror_fds[fd as usize] as *const RawFd;
        let sqe = opcode::FilesUpdate::new(ptr, 1)
            .offset(fd)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(user_data);
        self.push(sqe);
    }

    /// Whether requests on `fd` name its fixed-file mirror.
    #[inline]
    fn mirrored(&self, fd: RawFd) -> bool {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.mirror.get(i))
            .is_some_and(|&m| m != 0)
    }

    /// Whether this kernel caps a multishot recv at `optlen` bytes: one byte is written to
    /// a socket pair and received with a cap of one byte. A kernel with the cap ends the
    /// recv there (no MORE flag); one without it refuses the SQE (EINVAL), or, were it to
    /// ignore the field, keeps the recv armed (then cancelled here).
    fn probe_recv_cap(&mut self) -> bool {
        let mut fds = [0i32; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which has room for them.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return false;
        }
        let byte = [1u8];
        // SAFETY: `byte` is valid for one byte; fds[1] is ours.
        let wrote = unsafe { libc::write(fds[1], byte.as_ptr() as *const libc::c_void, 1) };
        const PROBE: u64 = u64::MAX;
        let mut capped = false;
        if wrote == 1 {
            let mut sqe = opcode::RecvMulti::new(types::Fd(fds[0]), BGID)
                .build()
                .user_data(PROBE);
            set_optlen(&mut sqe, 1);
            self.push(sqe);
            let mut out = Vec::new();
            let mut armed = false;
            for _ in 0..2 {
                let queued = self.uring.submission().len() as u32;
                if self.enter(queued, 1).is_err() {
                    break;
                }
                self.drain(&mut out);
                for c in &out {
                    if c.user_data != PROBE {
                        continue;
                    }
                    if let Some(bid) = c.buffer() {
                        self.recycle(bid);
                    }
                    if c.result == 1 && !c.more() {
                        capped = true;
                    }
                    armed = c.more();
                }
                if !armed {
                    break;
                }
                // It ignored the cap and stays armed: cancel it, then wait for its end.
                self.cancel(PROBE, PROBE - 1);
            }
            self.commit();
        }
        // SAFETY: both descriptors are ours and closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        capped
    }

    /// Whether multishot recvs end at the cap [`Ring::recv_multi`] is given.
    pub fn recv_capped(&self) -> bool {
        self.recv_capped
    }

    pub fn buffer_count(&self) -> u16 {
        self.count
    }

    /// Pushes an SQE, submitting first if the queue is full.
    fn push(&mut self, sqe: squeue::Entry) {
        loop {
            // SAFETY: every SQE built in this module points only at memory owned by `self`
            // (buffers, staged connects, header slots, the tick timespec) or at nothing.
            if unsafe { self.uring.submission().push(&sqe) }.is_ok() {
                return;
            }
            self.submit();
        }
    }

    /// Submits what is queued without waiting.
    pub fn submit(&mut self) {
        // Submission failures (EBUSY with a full CQ) are retried by the next loop turn.
        let _ = self.uring.submit();
        self.nstaged = 0;
    }

    /// Submits everything queued, for a worker that will not come back to its loop: the
    /// kernel is asked until the SQ is empty (a full CQ, EBUSY, is drained and thrown away:
    /// nothing will read it). Bounded, so a kernel that keeps refusing cannot hold the exit.
    pub fn submit_all(&mut self) {
        for _ in 0..64 {
            if self.uring.submission().is_empty() {
                return;
            }
            let to_submit = self.uring.submission().len() as u32;
            let _ = self.enter(to_submit, 0);
            self.uring.completion().for_each(drop);
        }
    }

    /// How long [`Ring::submit_and_wait`] spins before it sleeps (`busy_poll`).
    pub fn set_busy_poll(&mut self, d: Duration) {
        self.busy_poll_ns = d.as_nanos().min(u64::MAX as u128) as u64;
    }

    /// Submits what is queued and waits for at least one completion.
    ///
    /// With `busy_poll` set, it submits without waiting, then spins on the CQ and on the
    /// IORING_SQ_TASKRUN flag (the kernel sets it when task work waits to post completions,
    /// DEFER_TASKRUN included) for up to that long, running the task work without sleeping
    /// whenever the flag shows (not all of it posts a completion: a poll wake-up may just
    /// re-arm), and sleeps only when the time is up. Why: a sleeping worker is woken by
    /// whoever sends it data, and on a VM whose idle vCPU halts, that wake is an IPI the
    /// *sender's* CPU pays for with a VM exit, and the halted vCPU takes long to resume. A
    /// worker that is still spinning when the data comes needs no wake at all.
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        let to_submit = self.uring.submission().len() as u32;
        if self.busy_poll_ns == 0 {
            return self.enter(to_submit, 1);
        }
        self.enter(to_submit, 0)?;
        let start = std::time::Instant::now();
        let mut turns = 0u32;
        loop {
            if !self.uring.completion().is_empty() {
                return Ok(());
            }
            if self.uring.submission().taskrun() {
                self.enter(0, 0)?;
                continue;
            }
            turns = turns.wrapping_add(1);
            // The clock is read every 16 turns: a vDSO call costs more than a look at the flags.
            if turns.is_multiple_of(16) && start.elapsed().as_nanos() as u64 >= self.busy_poll_ns {
                return self.enter(0, 1);
            }
            std::hint::spin_loop();
        }
    }

    /// io_uring_enter(2): submits `to_submit` SQEs, runs pending task work, and waits until
    /// `wait_nr` completions are in the CQ.
    fn enter(&mut self, to_submit: u32, wait_nr: u32) -> io::Result<()> {
        // SAFETY: io_uring_enter with no argument pointer (size 0); `enter_fd` is this
        // ring's descriptor or, with REGISTERED_RING in the flags, its registered index.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.enter_fd,
                to_submit,
                wait_nr,
                self.enter_flags,
                std::ptr::null::<libc::c_void>(),
                0usize,
            )
        };
        self.nstaged = 0;
        if r >= 0 {
            // The kernel took all it was given (it returns early, without waiting, when it
            // stops at a bad SQE): then nothing may be left behind.
            if wait_nr > 0 && r as u32 == to_submit {
                self.debug_assert_submitted();
            }
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Interrupted, or the CQ is full (the caller drains it and comes back).
            Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(()),
            _ => Err(e),
        }
    }

    /// The one rule of waiting: nothing pushed may still sit in the SQ when the worker goes
    /// to sleep, or it runs only when something else wakes the worker (a close that never
    /// happens, so a peer that never gets its EOF). Checked wherever the ring waits.
    fn debug_assert_submitted(&mut self) {
        debug_assert!(
            self.uring.submission().is_empty(),
            "{} SQEs pushed but not submitted as the worker waits or leaves",
            self.uring.submission().len()
        );
    }

    /// Moves the completions into `out` (cleared first).
    pub fn drain(&mut self, out: &mut Vec<Cqe>) {
        out.clear();
        for c in self.uring.completion() {
            out.push(Cqe {
                user_data: c.user_data(),
                result: c.result(),
                flags: c.flags(),
            });
        }
    }

    /// Multishot accept on a listening socket.
    pub fn accept_multi(&mut self, fd: RawFd, user_data: u64) {
        let sqe = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        self.push(sqe);
    }

    /// One accept that never waits: a connection already queued, or -EAGAIN at once
    /// (IORING_ACCEPT_DONTWAIT, Linux 6.10+; older kernels answer -EINVAL). Unlike an armed
    /// accept it never joins the socket's wait queue, so it cannot take a wakeup meant for
    /// another process accepting on the same socket.
    pub fn accept_now(&mut self, fd: RawFd, user_data: u64) {
        let mut sqe =
            opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user_data);
        set_ioprio(&mut sqe, IORING_ACCEPT_DONTWAIT);
        self.push(sqe);
    }

    /// Multishot recv into the relay buffers. Where the kernel caps multishot recvs, this
    /// one ends (a completion without MORE) after `cap_buffers` buffers' worth of bytes, so
    /// one connection never takes more than that from the shared ring at once.
    pub fn recv_multi(&mut self, fd: RawFd, user_data: u64, cap_buffers: u32) {
        let mut sqe = on_socket!(self.mirrored(fd), fd, |t| opcode::RecvMulti::new(t, BGID)
            .build())
        .user_data(user_data);
        if self.recv_capped {
            set_optlen(&mut sqe, self.size.saturating_mul(cap_buffers.max(1)));
        }
        self.push(sqe);
    }

    /// Sends `len` bytes of relay buffer `bid` from `offset`.
    pub fn send_buffer(&mut self, fd: RawFd, bid: u16, offset: u32, len: u32, user_data: u64) {
        assert!(
            bid < self.count && offset as u64 + len as u64 <= self.size as u64,
            "send outside buffer {bid}"
        );
        // SAFETY: in bounds of the data mapping (checked above); the mapping outlives the ring.
        let ptr = unsafe {
            self.data
                .ptr
                .add(bid as usize * self.size as usize + offset as usize)
        };
        let sqe = on_socket!(self.mirrored(fd), fd, |t| opcode::Send::new(t, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build())
        .user_data(user_data);
        self.push(sqe);
    }

    /// A staged slot for a request with a linked timeout, holding `timeout`. The request and
    /// its timeout go into one submission batch, and the slot must not be reused before that
    /// batch is submitted: room for both is made first.
    fn stage(&mut self, timeout: Duration) -> &mut Staged {
        let free = {
            let sq = self.uring.submission();
            sq.capacity() - sq.len()
        };
        if self.nstaged == STAGED || free < 2 {
            self.submit();
        }
        let slot = &mut self.staged[self.nstaged];
        self.nstaged += 1;
        slot.timeout = types::Timespec::from(timeout);
        slot
    }

    /// Connects `fd` to `addr`, with a linked timeout. Two completions follow: the connect's
    /// (`-ECANCELED` when the timeout fired) and the timeout's.
    pub fn connect(
        &mut self,
        fd: RawFd,
        addr: &socket2::SockAddr,
        timeout: Duration,
        connect_ud: u64,
        timeout_ud: u64,
    ) {
        let fixed = self.mirrored(fd);
        let slot = self.stage(timeout);
        let len = addr.len() as usize;
        // SAFETY: `addr.as_ptr()` is valid for `addr.len()` bytes, and a SockAddr is never
        // longer than sockaddr_storage, which is what `slot.addr` is.
        unsafe {
            std::ptr::copy_nonoverlapping(
                addr.as_ptr() as *const u8,
                &mut slot.addr as *mut _ as *mut u8,
                len,
            );
        }
        let addr = &slot.addr as *const _ as *const libc::sockaddr;
        let connect = on_socket!(fixed, fd, |t| opcode::Connect::new(
            t,
            addr,
            len as libc::socklen_t
        )
        .build())
        .flags(squeue::Flags::IO_LINK)
        .user_data(connect_ud);
        let timer = opcode::LinkTimeout::new(&slot.timeout)
            .build()
            .user_data(timeout_ud);
        self.push(connect);
        self.push(timer);
    }

    /// Waits until `fd` is readable (a single-shot poll), with a linked timeout. Two
    /// completions follow: the poll's (its revents, or `-ECANCELED` when the timeout fired)
    /// and the timeout's.
    pub fn poll_readable(&mut self, fd: RawFd, timeout: Duration, poll_ud: u64, timeout_ud: u64) {
        let fixed = self.mirrored(fd);
        let slot = self.stage(timeout);
        let mask = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let poll = on_socket!(fixed, fd, |t| opcode::PollAdd::new(t, mask).build())
            .flags(squeue::Flags::IO_LINK)
            .user_data(poll_ud);
        let timer = opcode::LinkTimeout::new(&slot.timeout)
            .build()
            .user_data(timeout_ud);
        self.push(poll);
        self.push(timer);
    }

    /// A completion each time `fd` becomes readable, until cancelled or an error
    /// (multishot poll).
    pub fn poll_multi(&mut self, fd: RawFd, user_data: u64) {
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data);
        self.push(sqe);
    }

    /// Closes `fd`, and its fixed-file mirror first (the socket ends when both let go of
    /// it). Only a failure posts a completion (carrying `user_data`): a close that works
    /// needs no answer, and skipping its CQE saves a completion per descriptor.
    pub fn close(&mut self, fd: RawFd, user_data: u64) {
        if self.mirrored(fd) {
            self.mirror[fd as usize] = 0;
            // Queued before the descriptor's close, so the index is free again before the
            // number can come back from an accept or a socket() and be adopted anew.
            self.push(
                opcode::Close::new(types::Fixed(fd as u32))
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(user_data),
            );
        }
        self.push(
            opcode::Close::new(types::Fd(fd))
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(user_data),
        );
    }

    /// Cancels the request with `target` user data.
    pub fn cancel(&mut self, target: u64, user_data: u64) {
        self.push(
            opcode::AsyncCancel2::new(types::CancelBuilder::user_data(target))
                .build()
                .user_data(user_data),
        );
    }

    /// A completion every `period`, for ever (multishot timeout).
    pub fn tick(&mut self, period: Duration, user_data: u64) {
        *self.tick = types::Timespec::from(period);
        let sqe = opcode::Timeout::new(&*self.tick)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(user_data);
        self.push(sqe);
    }

    /// Sends a copy of `bytes` (at most [`HEADER_MAX`]) from header slot `slot`, which the
    /// caller owns until the completion (one slot per connection slot).
    pub fn send_header(&mut self, fd: RawFd, slot: usize, bytes: &[u8], user_data: u64) {
        assert!(bytes.len() <= HEADER_MAX);
        while self.headers.len() * HEADER_CHUNK <= slot {
            self.headers
                .push(Box::new([[0u8; HEADER_MAX]; HEADER_CHUNK]));
        }
        let buf = &mut self.headers[slot / HEADER_CHUNK][slot % HEADER_CHUNK];
        buf[..bytes.len()].copy_from_slice(bytes);
        let (ptr, len) = (buf.as_ptr(), bytes.len() as u32);
        let sqe = on_socket!(self.mirrored(fd), fd, |t| opcode::Send::new(t, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build())
        .user_data(user_data);
        self.push(sqe);
    }

    /// Hands relay buffer `bid` back to the kernel (visible after [`Ring::commit`]).
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.count);
        let idx = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `idx < count` and the entries mapping holds `count` entries; the kernel
        // reads entries only up to the published tail, and this one is past it.
        let entry = unsafe { &mut *(self.entries.ptr as *mut types::BufRingEntry).add(idx) };
        // SAFETY: bid < count, so the offset is inside the data mapping.
        entry.set_addr(unsafe { self.data.ptr.add(bid as usize * self.size as usize) } as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes recycled buffers to the kernel (once per loop turn).
    pub fn commit(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail field overlays the first entry's `resv`, inside the mapping; the
        // kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries.ptr as *const types::BufRingEntry)
                as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }
}
