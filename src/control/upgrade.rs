//! Zero-downtime binary upgrade: the running process hands its listening sockets to its
//! successor over a unix socket (SCM_RIGHTS), as HAProxy's seamless reload (`expose-fd
//! listeners`), NGINX's binary upgrade and Pingora's listener transfer do.
//!
//! The old process keeps a [`Handover`] listening on `upgrade_socket`. `ringlb serve
//! --upgrade` connects, receives every listening socket (each worker's SO_REUSEPORT socket of
//! each listener, then the admin and metrics endpoints), starts accepting on those very
//! sockets, and says `ready`. The old process then stops its endpoints and begins its
//! graceful stop (as on SIGTERM): its workers stop accepting and close their copies, which
//! leaves the sockets open in the new process, so nothing queued in their backlogs is lost;
//! its connections finish within `shutdown_timeout`, and it exits 0.
//!
//! Owns: the handover socket, the message, and the descriptors in flight.
//! Must not touch: the data plane (it only gets sockets) or the signal loop (it is told to
//! stop by a SIGTERM to this process, the path every stop takes).

use crate::sys;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most descriptors one handover carries (listeners x workers + 2).
const MAX_FDS: usize = 4096;

/// What is handed over, in the order sent.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    /// (listener name, how many sockets) in order.
    listeners: Vec<(String, usize)>,
    admin: bool,
    metrics: bool,
}

/// Sockets a new process got from the one it replaces.
#[derive(Default)]
pub struct Inherited {
    pub listeners: BTreeMap<String, Vec<OwnedFd>>,
    pub admin: Option<OwnedFd>,
    pub metrics: Option<OwnedFd>,
    /// The connection to the old process: `ready` goes back on it.
    conn: Option<UnixStream>,
}

impl Inherited {
    /// Tells the old process that this one accepts: it may stop.
    pub fn ready(&mut self) -> Result<(), String> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        c.write_all(b"ready\n")
            .map_err(|e| format!("cannot tell the old process that this one is ready: {e}"))
    }
}

/// Connects to the running process at `path` and takes its sockets.
pub fn receive(path: &Path) -> Result<Inherited, String> {
    let err = |what: &str, e: std::io::Error| {
        format!(
            "upgrade: cannot {what} {}: {e} (is the old ringlb running with this upgrade_socket?)",
            path.display()
        )
    };
    let conn = UnixStream::connect(path).map_err(|e| err("connect to", e))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| err("set a timeout on", e))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, mut fds) = sys::recv_fds(conn.as_raw_fd(), &mut buf, MAX_FDS)
        .map_err(|e| err("receive the sockets from", e))?;
    let manifest: Manifest = serde_json::from_slice(&buf[..n]).map_err(|e| {
        format!("upgrade: the old process sent a message this one cannot read: {e}")
    })?;
    let wanted = manifest.listeners.iter().map(|(_, k)| k).sum::<usize>()
        + manifest.admin as usize
        + manifest.metrics as usize;
    if fds.len() != wanted {
        return Err(format!(
            "upgrade: the old process announced {wanted} sockets and sent {}",
            fds.len()
        ));
    }
    let mut rest = fds.drain(..);
    let mut inherited = Inherited::default();
    for (name, count) in manifest.listeners {
        let socks: Vec<OwnedFd> = rest.by_ref().take(count).collect();
        inherited.listeners.insert(name, socks);
    }
    if manifest.admin {
        inherited.admin = rest.next();
    }
    if manifest.metrics {
        inherited.metrics = rest.next();
    }
    inherited.conn = Some(conn);
    Ok(inherited)
}

/// The old process's side: offers its sockets to a successor.
pub struct Handover {
    path: PathBuf,
    /// Duplicates of the sockets, closed when a stop begins (so that a plain stop does not
    /// keep listening sockets open in the SO_REUSEPORT group while no one accepts on them).
    sockets: std::sync::Arc<std::sync::Mutex<Option<Offer>>>,
    /// A successor took the sockets: the socket file at `path` is its now, not ours to
    /// remove.
    taken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The sockets on offer.
pub struct Offer {
    pub listeners: Vec<(String, Vec<OwnedFd>)>,
    pub admin: Option<OwnedFd>,
    pub metrics: Option<OwnedFd>,
}

impl Handover {
    /// Listens on `path` (a stale socket file from an earlier run is replaced) and hands
    /// `offer` to the first process that asks and then says it is ready; then calls
    /// `handed` (which stops the endpoints) and sends this process a SIGTERM. `hold(true)`
    /// is called before the sockets go (admin changes are refused from then on: the
    /// successor reads the state file as it starts), `hold(false)` if the handover fails.
    pub fn start(
        path: &Path,
        offer: Offer,
        hold: impl Fn(bool) + Send + 'static,
        handed: impl Fn() + Send + 'static,
    ) -> Result<Handover, String> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("upgrade_socket {}: cannot listen: {e}", path.display()))?;
        let sockets = std::sync::Arc::new(std::sync::Mutex::new(Some(offer)));
        let held = sockets.clone();
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let taken_flag = taken.clone();
        std::thread::Builder::new()
            .name("ringlb-upgrade".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    match hand_over(&conn, &held, &hold) {
                        Ok(true) => {
                            taken_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!(
                                "upgrade: the new process accepts on our sockets; stopping"
                            );
                            handed();
                            sys::terminate_self();
                            return;
                        }
                        Ok(false) => return,
                        Err(e) => {
                            hold(false);
                            tracing::warn!(error = %e, "upgrade: handover failed; still serving")
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the upgrade thread: {e}"))?;
        Ok(Handover {
            path: path.to_path_buf(),
            sockets,
            taken,
        })
    }

    /// A stop begins: close the duplicates, and offer nothing more.
    pub fn close(&self) {
        if let Ok(mut s) = self.sockets.lock() {
            *s = None;
        }
        if !self.taken.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sends the sockets and waits for `ready`. Ok(false): nothing left to offer (stopping).
fn hand_over(
    conn: &UnixStream,
    held: &std::sync::Mutex<Option<Offer>>,
    hold: &dyn Fn(bool),
) -> Result<bool, String> {
    let guard = held.lock().map_err(|_| "poisoned".to_string())?;
    let Some(offer) = guard.as_ref() else {
        return Ok(false);
    };
    let manifest = Manifest {
        listeners: offer
            .listeners
            .iter()
            .map(|(n, s)| (n.clone(), s.len()))
            .collect(),
        admin: offer.admin.is_some(),
        metrics: offer.metrics.is_some(),
    };
    let mut fds: Vec<i32> = offer
        .listeners
        .iter()
        .flat_map(|(_, s)| s.iter().map(|f| f.as_raw_fd()))
        .collect();
    fds.extend(offer.admin.iter().map(|f| f.as_raw_fd()));
    fds.extend(offer.metrics.iter().map(|f| f.as_raw_fd()));
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    hold(true);
    sys::send_fds(conn.as_raw_fd(), &body, &fds)
        .map_err(|e| format!("cannot send the sockets: {e}"))?;
    drop(guard);
    // Fault injection (debug builds): the old process dies between the sockets and `ready`,
    // as an OOM kill would have it (tests/upgrade.rs).
    #[cfg(debug_assertions)]
    if std::env::var_os("RINGLB_FAULT_UPGRADE_DIE_AFTER_SEND").is_some() {
        std::process::exit(9);
    }
    // The new process answers once it accepts (or goes away: then this one carries on).
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from the new process: {e}"))?;
    if line.trim() != "ready" {
        return Err(format!(
            "the new process did not start (it said {:?})",
            line.trim()
        ));
    }
    Ok(true)
}
