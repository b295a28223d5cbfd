//! The process's OS layer: the raw system calls that std and socket2 do not offer. Sockets
//! for backend connections, their addresses and shutdown; the workers' doorbells, CPUs and
//! open-file limit; descriptor passing for the upgrade; signals to process groups and the
//! page size for the scaler.
//!
//! Owns: nothing but the calls; every descriptor here is one its caller owns.
//! Must not touch: the ring, connection logic or any policy. With `proxy/ring.rs` the only
//! place in the crate where `unsafe` is allowed, each block with its `SAFETY:` comment.
#![allow(unsafe_code)]
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Keepalive in the kernel's units: seconds, seconds, probes (None: the system's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveTimers {
    pub idle: Option<u32>,
    pub interval: Option<u32>,
    pub count: Option<u32>,
}

/// A new TCP socket for a backend connection, close-on-exec, with TCP_NODELAY (a relay
/// must not hold back the last small segment of a response) and, if given, a congestion
/// control (validated at config load; should it fail here, the default stays).
pub fn stream_socket(
    v6: bool,
    congestion: Option<&str>,
    keepalive: Option<KeepaliveTimers>,
) -> io::Result<RawFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for the duration of the call; fd was just created.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    if let Some(name) = congestion {
        // SAFETY: `name` is valid for `name.len()` bytes during the call (the kernel
        // copies at most that many); fd was just created.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                name.as_ptr() as *const libc::c_void,
                name.len() as libc::socklen_t,
            );
        }
    }
    if let Some(ka) = keepalive {
        set_keepalive(fd, ka);
    }
    Ok(fd)
}

/// SO_KEEPALIVE, with TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT for the timers given
/// (the others stay the system's): one setsockopt each, values validated at config load.
pub fn set_keepalive(fd: RawFd, k: KeepaliveTimers) {
    let options = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, Some(1)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, k.idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, k.interval),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, k.count),
    ];
    for (level, name, value) in options {
        let Some(value) = value else { continue };
        let value = value as libc::c_int;
        // SAFETY: `value` is a live c_int of the size passed for the duration of the call.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn sock_name(fd: RawFd, peer: bool) -> Option<SocketAddr> {
    // SAFETY: try_init hands a zeroed storage and its length; the call writes at most
    // that many bytes and sets the length, as try_init requires.
    let r = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let r = if peer {
                libc::getpeername(fd, storage.cast(), len)
            } else {
                libc::getsockname(fd, storage.cast(), len)
            };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    };
    r.ok().and_then(|(_, addr)| addr.as_socket())
}

/// The remote address of a connected socket.
pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    sock_name(fd, true)
}

/// The local address of a socket.
pub fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    sock_name(fd, false)
}

/// Shuts down the write side of a connected socket (the peer reads EOF).
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall on a descriptor the caller owns; the result is not needed.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Makes the coming close of a connected socket send a reset instead of a FIN, and drop
/// what is unsent (SO_LINGER with a zero timeout).
pub fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads one `linger` from a valid pointer with its exact size; `fd`
    // is owned by the caller. An error (not a socket any more) changes nothing here.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Closes a descriptor synchronously (for error paths before the ring owns it).
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and does not use it afterwards.
    unsafe { libc::close(fd) };
}

/// Bytes received on socket `fd` and not yet read (FIONREAD); an error counts as some, so
/// a caller that closes only quiet sockets leaves this one alone.
pub fn unread_bytes(fd: RawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, which `n` is.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return 1;
    }
    n
}

/// Copies the bytes waiting on `fd` into `buf` without taking them (MSG_PEEK), without
/// blocking: the count, 0 at EOF, or -errno.
pub fn peek(fd: RawFd, buf: &mut [u8]) -> isize {
    recv_with(fd, buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// Takes up to `buf.len()` waiting bytes from `fd` without blocking: the count, 0 at EOF,
/// or -errno (the PROXY header, once its length is known).
pub fn recv_now(fd: RawFd, buf: &mut [u8]) -> isize {
    recv_with(fd, buf, libc::MSG_DONTWAIT)
}

fn recv_with(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> isize {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), flags) };
    if n < 0 {
        -(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as isize)
    } else {
        n
    }
}

/// SO_RCVLOWAT: the socket reads as readable only once `n` bytes wait (or at EOF).
pub fn set_rcvlowat(fd: RawFd, n: i32) {
    // SAFETY: the option value points at a live i32 of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            &n as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// A non-blocking, close-on-exec eventfd: a worker's doorbell (see `accept.rs`).
pub fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Rings an eventfd doorbell (adds 1; a full counter, which cannot happen here, is ignored).
pub fn ring_doorbell(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: `one` is valid for reads of its 8 bytes for the duration of the call.
    unsafe { libc::write(fd, one.as_ptr() as *const libc::c_void, one.len()) };
}

/// Resets an eventfd doorbell (reads its counter; nothing to read is fine).
pub fn reset_doorbell(fd: RawFd) {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for writes of its 8 bytes for the duration of the call.
    unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
}

/// Sends `data` and the descriptors `fds` over a unix stream socket (SCM_RIGHTS): the
/// receiver gets its own descriptors for the same open files (the listening-socket handover
/// of an upgrade).
pub fn send_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cmsg = vec![0u8; space.max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes, enough for one header and `fds`
        // (CMSG_SPACE); CMSG_FIRSTHDR returns a pointer inside it, CMSG_DATA past its header.
        unsafe {
            let h = libc::CMSG_FIRSTHDR(&msg);
            (*h).cmsg_level = libc::SOL_SOCKET;
            (*h).cmsg_type = libc::SCM_RIGHTS;
            (*h).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(h), fd_bytes);
        }
    }
    // SAFETY: `msg` and everything it points at (iov, data, cmsg) live across the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::other("short sendmsg"));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and up to `max_fds` descriptors sent with [`send_fds`].
pub fn recv_fds(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::FromRawFd;
    let fd_bytes = max_fds * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cmsg = vec![0u8; space.max(1)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `buf` and `cmsg`, both live and writable across the call;
    // MSG_CMSG_CLOEXEC marks the received descriptors close-on-exec.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of `cmsg` with well-formed headers;
    // CMSG_FIRSTHDR/CMSG_NXTHDR walk them within that length, and each SCM_RIGHTS payload
    // holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors that are now ours.
    unsafe {
        let mut h = libc::CMSG_FIRSTHDR(&msg);
        while !h.is_null() {
            if (*h).cmsg_level == libc::SOL_SOCKET && (*h).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*h).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(h) as *const RawFd;
                for i in 0..count {
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                        data.add(i),
                    )));
                }
            }
            h = libc::CMSG_NXTHDR(&msg, h);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("more descriptors were sent than expected"));
    }
    Ok((n as usize, fds))
}

/// SIGTERM to this process: a stop asked for from inside (after an upgrade's handover),
/// taken by the same signal loop as any other.
pub fn terminate_self() {
    // SAFETY: getpid(2) and kill(2) take no pointers.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

/// The soft open-file limit in force (0 if it cannot be read).
pub fn nofile_limit() -> u64 {
    // SAFETY: `lim` is a valid rlimit for the call.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur
    }
}

/// Raises the soft open-file limit to the hard one (as HAProxy does); returns the limit.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: `lim` is a valid rlimit for both calls.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        lim.rlim_cur
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a valid cpu_set_t for the call and for CPU_ISSET.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1))
                .collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: `set` is a valid, zeroed cpu_set_t; cpu < CPU_SETSIZE is checked by the caller
    // through allowed_cpus().
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `sig` to the process group that `pid` leads; false if there is none (or `pid` is
/// no process id: 0 and negative numbers mean "my group" and "everyone" to kill(2), never
/// what a caller means).
pub fn signal_group(pid: u32, sig: i32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().filter(|p| *p > 0) else {
        return false;
    };
    // SAFETY: kill(2) takes no pointers; a negative pid names the process group.
    unsafe { libc::kill(-pid, sig) == 0 }
}

/// Sends `sig` to the process `pid` alone; false if there is none.
pub fn signal(pid: u32, sig: i32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().filter(|p| *p > 0) else {
        return false;
    };
    // SAFETY: kill(2) takes no pointers.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// The process group `pid` belongs to (`None` if it does not exist).
pub fn process_group(pid: u32) -> Option<u32> {
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    // SAFETY: getpgid(2) takes no pointers.
    let g = unsafe { libc::getpgid(pid) };
    u32::try_from(g).ok()
}

/// The size of a memory page in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf(3) takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096).max(1)
}
