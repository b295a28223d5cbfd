//! Connect: picks a backend, connects to it with a linked timeout (the next candidate on
//! refusal or timeout, up to the listener's `retries`), and sends the PROXY header.
//!
//! Owns: the backend side's socket until the relay starts, and the backend's `active` count
//! for this connection (taken at the pick, given back on a failed connect or at release).
//! Must not touch: relayed bytes.

use super::conn::{self, Phase, Side};
use super::op::Op;
use super::ring::HEADER_MAX;
use super::worker::Worker;
use crate::accesslog::End;
use crate::backend::ConnectError;
use crate::balance::{Pick, all_full};
use crate::config::ProxyProtocol;
use crate::sys;
use std::sync::atomic::Ordering::Relaxed;

/// A connect to the backend completed: relay (after the PROXY header, if the pool sends
/// one), or try the next candidate on refusal or timeout.
pub(super) fn on_connect(w: &mut Worker, slot: usize, res: i32) {
    let now = w.now;
    let c = w.conns.get(slot);
    if c.phase == Phase::Closing {
        return;
    }
    let backend = c.backend.clone().expect("connecting to a backend");
    if res == 0 {
        c.end = None;
        if c.logged
            && let Some(info) = w.logs.get_mut(slot)
        {
            info.connect_us = c
                .connect_started
                .elapsed()
                .as_micros()
                .min(u32::MAX as u128) as u32;
        }
        backend.stats.failures_in_row.store(0, Relaxed);
        c.pool
            .connect_duration
            .record(c.connect_started.elapsed().as_secs_f64());
        c.last_active = now;
        if c.listener.proxy_protocol != ProxyProtocol::Off {
            return w.send_header(slot, 0);
        }
        return w.start_relay(slot);
    }
    let reason = match -res {
        libc::ECONNREFUSED => ConnectError::Refused,
        libc::ECANCELED | libc::ETIMEDOUT | libc::ETIME => ConnectError::Timeout,
        _ => ConnectError::Other,
    };
    backend.stats.connect_errors[reason as usize].fetch_add(1, Relaxed);
    // What the access log says if no later attempt connects.
    c.end = Some(match reason {
        ConnectError::Refused => End::ConnectRefused,
        _ => End::ConnectTimeout,
    });
    backend.stats.failures_in_row.fetch_add(1, Relaxed);
    backend.stats.active.fetch_sub(1, Relaxed);
    tracing::debug!(backend = %backend.addr, ?reason, "connect failed");
    let fd = c.server;
    c.server = -1;
    c.backend = None;
    // Nothing else uses this descriptor: the linked timeout is not bound to it.
    let pool = c.pool.clone();
    let close = w.conns.ud(slot, Op::Close);
    w.ring.close(fd, close);
    w.pool_freed(&pool);
    w.connect_next(slot);
}

/// Sends the rest of the PROXY header, or starts relaying once it is out.
pub(super) fn on_header(w: &mut Worker, slot: usize, res: i32) {
    let c = w.conns.get(slot);
    if c.phase == Phase::Closing {
        return;
    }
    if res <= 0 {
        return w.teardown(slot, End::BackendError);
    }
    let Phase::Header { len, sent } = c.phase else {
        return;
    };
    let sent = sent.saturating_add(res as u8);
    if sent < len {
        // A partial send of a ~100-byte header: resend the rest (rare, but legal).
        return w.send_header(slot, sent as usize);
    }
    w.start_relay(slot);
}

impl Worker {
    /// Picks the next backend not yet tried and connects to it; closes the client when none
    /// is left.
    pub(super) fn connect_next(&mut self, slot: usize) {
        let rand = self.rand();
        let c = self.conns.get(slot);
        c.phase = Phase::Connecting;
        let attempts_left = c.ntried as u32 <= c.listener.retries;
        let backup = c.pool.serving_backups();
        let picked = if attempts_left {
            c.pool.balancer.pick(
                &c.pool.backends,
                &Pick {
                    key: c.key,
                    rand,
                    tried: c.tried(),
                    backup,
                },
            )
        } else {
            None
        };
        let Some(i) = picked else {
            if attempts_left && c.pool.limited && all_full(&c.pool.backends, c.tried(), backup) {
                // Every candidate is at its max_connections: wait for a slot.
                return self.enqueue(slot);
            }
            if c.ntried == 0 {
                c.listener.stats.no_backend.fetch_add(1, Relaxed);
                tracing::debug!(listener = %c.listener.name, "no routable backend");
            }
            // After failed attempts the last one's reason stands (set in on_connect).
            self.teardown(slot, End::NoBackend);
            return;
        };
        let backend = c.pool.backends[i].clone();
        if !backend.try_acquire() {
            // Another worker took its last slot between the pick and now.
            return self.enqueue(slot);
        }
        c.tried[c.ntried as usize] = i as u32;
        c.ntried += 1;
        backend.stats.connections.fetch_add(1, Relaxed);
        let fd = match sys::stream_socket(
            backend.addr.is_ipv6(),
            c.pool.tcp_congestion(),
            c.pool.tcp_keepalive,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                backend.stats.active.fetch_sub(1, Relaxed);
                if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    // Out of descriptors: stop taking clients we cannot serve; those waiting
                    // stay in the backlog until descriptors free up.
                    self.pause_accepting();
                }
                if self.accept_warned < 1 {
                    tracing::warn!(error = %e, "cannot create a backend socket");
                }
                self.accept_warned += 1;
                self.teardown(slot, End::Rejected);
                return;
            }
        };
        c.server = fd;
        c.connect_started = std::time::Instant::now();
        let timeout = c.listener.connect_timeout;
        c.backend = Some(backend.clone());
        let cu = self.conns.submit(slot, Op::Connect);
        let tu = self.conns.submit(slot, Op::ConnectTimeout);
        self.ring.connect(fd, &backend.sockaddr, timeout, cu, tu);
    }

    /// Sends the PROXY header from byte `from` on (a partial send resends the rest).
    fn send_header(&mut self, slot: usize, from: usize) {
        let c = self.conns.get(slot);
        let mut hdr = [0u8; HEADER_MAX];
        let version = c.listener.proxy_protocol;
        let addrs = match &c.proxied {
            // Passed on as the front balancer gave them.
            Some(p) => (Some(p.0), Some(p.1)),
            None => (sys::peer_addr(c.client), sys::local_addr(c.client)),
        };
        let n = match addrs {
            (Some(peer), Some(local)) => conn::proxy_header(version, peer, local, &mut hdr),
            _ => 0,
        };
        if n == 0 {
            // The client's addresses are gone (it reset): nothing to announce.
            return self.teardown(slot, End::ClientError);
        }
        c.phase = Phase::Header {
            len: n as u8,
            sent: from as u8,
        };
        let server = c.server;
        let ud = self.conns.submit(slot, Op::Header);
        self.ring.send_header(server, slot, &hdr[from..n], ud);
    }

    fn start_relay(&mut self, slot: usize) {
        self.conns.get(slot).phase = Phase::Relaying;
        self.arm_recv(slot, Side::ToBackend);
        self.arm_recv(slot, Side::ToClient);
    }
}
