//! systemd's readiness protocol (sd_notify), without libsystemd.
//!
//! Owns: sending `READY=1`, `RELOADING=1` and `STOPPING=1` to `$NOTIFY_SOCKET` when it is set
//! (a `Type=notify` unit). A missing socket is not an error: ringlb runs the same outside
//! systemd.
//! Must not touch: anything else; it is called by `server` at the right moments.

use std::os::unix::net::UnixDatagram;

/// Sends one notification; returns whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: '@' stands for the leading NUL.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    match sent {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd");
            false
        }
    }
}
