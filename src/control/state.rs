//! The control plane's view of the world: the config, the members of every pool, and the
//! runtime changes made through the admin API (persisted to `state_file`).
//!
//! Owns: every change of membership, weight and state, applied in one place. A change is
//! validated whole first, then persisted (temp file, fsync, rename), then applied and
//! published as a new snapshot: a failure at any step leaves nothing half-applied.
//! Must not touch: sockets or the event loop; the data plane sees only the snapshot swap and
//! the per-backend atomics.

use crate::backend::{Backend, BackendState};
use crate::config::{Config, MAX_WEIGHT};
use crate::snapshot::{Members, Shared, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether the admin API made a backend a member, took it out, or left membership to the
/// config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// As the file says (an entry that only sets the weight or the drain).
    #[default]
    #[serde(alias = "weight")]
    Keep,
    /// Added at runtime: a member whatever the file says.
    Add,
    /// Removed at runtime: not a member whatever the file says.
    Remove,
}

/// The admin API's last word on one backend. It wins over the config file, at start and at
/// every reload, until the admin API says otherwise (as HAProxy's server-state file wins
/// over its config). The rules, also in README.md ("Runtime state"):
/// - POST adds: `add` with its weight (a member even if the file drops it later).
/// - DELETE: `remove` (not a member even if the file lists it); once the drain has ended,
///   the entry is dropped if the file does not list the backend, as it then says nothing.
/// - PUT weight: the weight, whatever the file says (membership unchanged).
/// - POST drain / ready: the drain flag, set or cleared; a draining backend comes back
///   draining after a restart.
/// - A reload drops the `keep` and `remove` entries of backends the new file does not
///   list (they would say nothing), but never an `add`, nor the `remove` of a DELETE whose
///   drain is still under way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub op: Membership,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// Scale-in protection until this Unix time (seconds), as ECS task protection: a wall
    /// clock, so that it means the same after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_until: Option<u64>,
    /// Added at runtime as a backup server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

impl Entry {
    /// Says nothing the file does not: can be dropped.
    fn is_empty(&self) -> bool {
        self.op == Membership::Keep
            && self.weight.is_none()
            && !self.drained
            && self.protection().is_none()
    }

    /// The protection's end, if it has not passed.
    fn protection(&self) -> Option<u64> {
        let now = crate::backend::unix_now_ms();
        self.protected_until
            .filter(|&t| crate::backend::protection_left(t, now).is_some())
    }
}

/// Default and longest scale-in protection (ECS task scale-in protection: 2 h, 48 h).
pub const DEFAULT_PROTECTION: std::time::Duration = std::time::Duration::from_secs(2 * 3600);
pub const MAX_PROTECTION: std::time::Duration = std::time::Duration::from_secs(48 * 3600);

/// Runtime changes per pool and backend, applied on top of the config file. Files written
/// by earlier versions (`{"op": "add", "weight": 3}`, `{"op": "weight", ...}`,
/// `{"op": "remove"}`) read as the same entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub pools: BTreeMap<String, BTreeMap<SocketAddr, Entry>>,
}

/// What a reload changed: backends that joined (to check) and that left (to drain, then
/// remove with the [`Departure`] given).
pub type Reloaded = (Vec<Arc<Backend>>, Vec<(Arc<Backend>, Departure)>);

/// Names one removal: [`State::finish_removal`] acts only for the removal still in force
/// (a DELETE after a reload dropped the backend replaces the reload's removal and timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure(u64);

/// An admin request that cannot be applied, with the HTTP status it maps to (the admin API
/// tells the cases apart; the text is the response's `error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Persisting failed: nothing was changed.
    #[error("{0}")]
    Internal(String),
    /// Not now, shortly: an upgrade is handing this process over (see `upgrade.rs`).
    #[error("{0}")]
    Unavailable(String),
}

/// Fault injection (debug builds): the first `RINGLB_FAULT_ADMIN_503` changes are refused
/// as during an upgrade's handover, for the tests of clients that must ask again.
fn injected_unavailable() -> bool {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicI64, Ordering};
        static LEFT: AtomicI64 = AtomicI64::new(-1);
        if LEFT.load(Ordering::Relaxed) == -1 {
            let n = std::env::var("RINGLB_FAULT_ADMIN_503")
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            let _ = LEFT.compare_exchange(-1, n.max(0), Ordering::Relaxed, Ordering::Relaxed);
        }
        LEFT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n > 0).then(|| n - 1)
        })
        .is_ok()
    }
    #[cfg(not(debug_assertions))]
    false
}

/// At most the first 64 characters of a value a client sent, to quote in an error.
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::BadRequest(m)
            | Refusal::NotFound(m)
            | Refusal::Conflict(m)
            | Refusal::Internal(m)
            | Refusal::Unavailable(m) => m,
        }
    }
}

/// Why a backend is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    /// DELETE through the admin API: goes through with whatever a reload says.
    Deleted,
    /// A reload's file no longer lists it: a later reload that lists it again keeps it.
    Dropped,
}

pub struct State {
    pub config: Config,
    pub members: Members,
    overlay: Overlay,
    state_file: Option<PathBuf>,
    pub shared: Arc<Shared>,
    /// Members being drained before they leave.
    leaving: Vec<(Arc<Backend>, Leaving, Departure)>,
    departures: u64,
    /// What the pools' DNS names resolved to last (see `discovery.rs`).
    pub resolved: Resolved,
    /// An upgrade is handing the sockets to a successor, which reads the state file as it
    /// starts: a change committed now would be lost with this process, so none is.
    pub handing_over: bool,
}

impl Overlay {
    pub fn load(path: &Path) -> Result<Overlay, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("state file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
            Err(e) => Err(format!("state file {}: {e}", path.display())),
        }
    }

    /// Writes atomically: a crash leaves the old file or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        crate::atomic_file::write(path, text.as_bytes())
            .map_err(|e| format!("cannot write state file {}: {e}", path.display()))
    }

    fn entry(&self, pool: &str, addr: SocketAddr) -> Entry {
        self.pools
            .get(pool)
            .and_then(|p| p.get(&addr))
            .cloned()
            .unwrap_or_default()
    }

    /// This overlay with `pool`/`addr`'s entry replaced (an empty entry is dropped).
    fn with(&self, pool: &str, addr: SocketAddr, e: Entry) -> Overlay {
        let mut o = self.clone();
        let list = o.pools.entry(pool.to_string()).or_default();
        if e.is_empty() {
            list.remove(&addr);
        } else {
            list.insert(addr, e);
        }
        if list.is_empty() {
            o.pools.remove(pool);
        }
        o
    }

    /// Without the entries that say nothing about `config`: `keep` and `remove` entries of
    /// backends it does not list, and pools it does not have. The `remove` entry of a
    /// backend whose DELETE is still draining (`deleting`) stays: a file that lists it again
    /// before the drain ends must not bring it back.
    fn pruned(
        &self,
        config: &Config,
        resolved: &Resolved,
        deleting: &[(String, SocketAddr)],
    ) -> Overlay {
        let mut o = self.clone();
        o.pools.retain(|name, list| {
            if !config.pools.contains_key(name) {
                return false;
            }
            list.retain(|addr, e| {
                e.op == Membership::Add
                    || listed(config, resolved, name, *addr)
                    || (e.op == Membership::Remove
                        && deleting.iter().any(|(p, a)| p == name && a == addr))
            });
            !list.is_empty()
        });
        o
    }
}

/// What DNS-named backends resolved to, by (pool, name, port): kept from the last good
/// answer (a failed or empty lookup changes nothing).
pub type Resolved = BTreeMap<(String, String, u16), Vec<SocketAddr>>;

/// A pool's backends from DNS: (address, weight, backup), first answer first, each address
/// once.
fn resolved_of(
    resolved: &Resolved,
    pool: &str,
    pc: &crate::config::PoolConfig,
) -> Vec<(SocketAddr, u32, bool)> {
    let mut out: Vec<(SocketAddr, u32, bool)> = Vec::new();
    for (name, port, weight, backup) in pc.named() {
        for a in resolved
            .get(&(pool.to_string(), name.to_string(), port))
            .into_iter()
            .flatten()
        {
            if !pc.lists(*a) && !out.iter().any(|(x, _, _)| x == a) {
                out.push((*a, weight, backup));
            }
        }
    }
    out
}

/// Whether `config` lists `addr` in `pool`, fixed or by a name that resolved to it.
fn listed(config: &Config, resolved: &Resolved, pool: &str, addr: SocketAddr) -> bool {
    config.pools.get(pool).is_some_and(|p| {
        p.lists(addr)
            || resolved_of(resolved, pool, p)
                .iter()
                .any(|(a, _, _)| *a == addr)
    })
}

/// The members a config plus overlay give, reusing `existing` backends (same `Arc`) so their
/// states, counters and connections carry on. Backends the overlay adds start `starting`;
/// those it drains are draining.
fn members_of(
    config: &Config,
    overlay: &Overlay,
    resolved: &Resolved,
    existing: &Members,
) -> Members {
    let mut out = Members::new();
    for (name, pc) in &config.pools {
        let old = existing.get(name);
        let changes = overlay.pools.get(name);
        let mut list: Vec<Arc<Backend>> = Vec::new();
        let mut join = |addr: SocketAddr,
                        weight: u32,
                        backup: bool,
                        fresh: BackendState,
                        e: Option<&Entry>| {
            let weight = e.and_then(|e| e.weight).unwrap_or(weight);
            let drained = e.is_some_and(|e| e.drained);
            let protected_until = e.and_then(|e| e.protection()).unwrap_or(0);
            let b = match old.and_then(|o| o.iter().find(|b| b.addr == addr)) {
                Some(b) => {
                    b.set_weight(weight);
                    if drained {
                        b.set_state(BackendState::Draining);
                    }
                    b.clone()
                }
                // A new backend restored draining has no verdict yet: its checks start from
                // unhealthy, as its `healthy` flag does, so that `ready` before they pass
                // gives `down`, not an unchecked `up`.
                None => Arc::new(Backend::new(
                    name,
                    addr,
                    weight,
                    if drained {
                        BackendState::Draining
                    } else {
                        fresh
                    },
                )),
            };
            b.set_protected_until(protected_until);
            b.set_backup(backup);
            list.push(b);
        };
        for bc in pc.backends.get_ref() {
            let Some(addr) = bc.addr else { continue };
            let e = changes.and_then(|c| c.get(&addr));
            if e.is_some_and(|e| e.op == Membership::Remove) {
                continue;
            }
            join(addr, *bc.weight.get_ref(), bc.backup, BackendState::Up, e);
        }
        // From DNS: new addresses start `starting`, up after `rise` checks (as admin adds).
        let from_dns = resolved_of(resolved, name, pc);
        for &(addr, weight, backup) in &from_dns {
            let e = changes.and_then(|c| c.get(&addr));
            if e.is_some_and(|e| e.op == Membership::Remove) {
                continue;
            }
            join(addr, weight, backup, BackendState::Starting, e);
        }
        for (addr, e) in changes.into_iter().flatten() {
            if e.op == Membership::Add
                && !pc.lists(*addr)
                && !from_dns.iter().any(|(a, _, _)| a == addr)
            {
                join(*addr, 1, e.backup, BackendState::Starting, Some(e));
            }
        }
        out.insert(name.clone(), list);
    }
    out
}

impl State {
    /// The state at start: the config plus whatever the state file holds.
    pub fn new(config: Config, workers: usize) -> Result<State, String> {
        let overlay = match &config.state_file {
            Some(p) => Overlay::load(p)?,
            None => Overlay::default(),
        };
        let members = members_of(&config, &overlay, &Resolved::new(), &Members::new());
        let shared = Shared::new(Snapshot::assemble(&config, &members, None), workers);
        Ok(State {
            state_file: config.state_file.clone(),
            config,
            members,
            overlay,
            shared,
            leaving: Vec::new(),
            departures: 0,
            resolved: Resolved::new(),
            handing_over: false,
        })
    }

    /// A DNS name of `pool` resolved to `addrs` (non-empty): new addresses join as
    /// `starting`, vanished ones drain and leave, as a reload that listed them would have it.
    /// An unchanged answer changes nothing.
    pub fn set_resolved(
        &mut self,
        pool: &str,
        name: &str,
        port: u16,
        mut addrs: Vec<SocketAddr>,
    ) -> Result<Reloaded, String> {
        addrs.sort();
        addrs.dedup();
        let key = (pool.to_string(), name.to_string(), port);
        if self.resolved.get(&key) == Some(&addrs) {
            return Ok((Vec::new(), Vec::new()));
        }
        tracing::info!(pool, name, port, addresses = ?addrs, "DNS answer changed");
        self.resolved.insert(key, addrs);
        self.reload(self.config.clone())
    }

    /// Publishes the current members as a new snapshot (balancers rebuilt).
    pub fn publish(&self) {
        let old = self.shared.snapshot.load_full();
        self.shared.snapshot.store(Arc::new(Snapshot::assemble(
            &self.config,
            &self.members,
            Some(&old),
        )));
    }

    /// Writes `next` to the state file (if there is one) and makes it the overlay. Nothing is
    /// changed if the write fails.
    fn commit(&mut self, next: Overlay) -> Result<(), Refusal> {
        if next == self.overlay {
            return Ok(());
        }
        if self.handing_over || injected_unavailable() {
            return Err(Refusal::Unavailable(
                "an upgrade is handing this process over to its successor: retry in a moment (the successor answers then); nothing was changed".into(),
            ));
        }
        if let Some(p) = &self.state_file {
            next.save(p)
                .map_err(|e| Refusal::Internal(format!("{e}; nothing was changed")))?;
        }
        self.overlay = next;
        Ok(())
    }

    fn find(&self, pool: &str, addr: &str) -> Result<Arc<Backend>, Refusal> {
        let list = self
            .members
            .get(pool)
            .ok_or_else(|| Refusal::NotFound(format!("no pool {:?}", shown(pool))))?;
        // Not an address: it cannot name a member, so there is no such backend (404, as
        // for any other name that is not there).
        let addr: SocketAddr = addr.parse().map_err(|_| {
            Refusal::NotFound(format!(
                "pool {pool:?} has no backend {:?} (not an IP:port address)",
                shown(addr)
            ))
        })?;
        list.iter()
            .find(|b| b.addr == addr)
            .cloned()
            .ok_or_else(|| Refusal::NotFound(format!("pool {pool:?} has no backend {addr}")))
    }

    /// A member, for reading.
    pub fn backend(&self, pool: &str, addr: &str) -> Result<Arc<Backend>, Refusal> {
        self.find(pool, addr)
    }

    fn leaving(&self, b: &Arc<Backend>) -> Option<Leaving> {
        self.leaving
            .iter()
            .find(|(x, _, _)| Arc::ptr_eq(x, b))
            .map(|(_, why, _)| *why)
    }

    /// Records that `b` is leaving, replacing any earlier removal of it.
    fn depart(&mut self, b: &Arc<Backend>, why: Leaving) -> Departure {
        self.departures += 1;
        let d = Departure(self.departures);
        self.leaving.retain(|(x, _, _)| !Arc::ptr_eq(x, b));
        self.leaving.push((b.clone(), why, d));
        d
    }

    /// Refuses a change to a backend that is on its way out.
    fn not_leaving(&self, b: &Arc<Backend>) -> Result<(), Refusal> {
        match self.leaving(b) {
            Some(_) => Err(Refusal::Conflict(format!(
                "pool {:?} backend {} is being removed (draining, {} connections left)",
                b.pool,
                b.addr,
                b.active().max(0)
            ))),
            None => Ok(()),
        }
    }

    /// Adds a backend; it starts `starting` and takes traffic after `rise` passing checks.
    pub fn add(
        &mut self,
        pool: &str,
        addr: &str,
        weight: Option<u32>,
        backup: bool,
    ) -> Result<Arc<Backend>, Refusal> {
        if !self.members.contains_key(pool) {
            return Err(Refusal::NotFound(format!("no pool {:?}", shown(pool))));
        }
        let addr: SocketAddr = addr.parse().map_err(|_| {
            Refusal::BadRequest(format!("{:?} is not an IP:port address", shown(addr)))
        })?;
        // 0.0.0.0/8 is "this network" (RFC 1122), never a destination.
        let this_network = matches!(addr.ip(), std::net::IpAddr::V4(v4) if v4.octets()[0] == 0);
        if addr.port() == 0 || addr.ip().is_unspecified() || this_network {
            return Err(Refusal::BadRequest(format!(
                "{addr} needs a real IP and a port"
            )));
        }
        let weight = weight.unwrap_or(1);
        check_weight(weight)?;
        if let Some(b) = self.members[pool].iter().find(|b| b.addr == addr) {
            return Err(match self.leaving(b) {
                Some(_) => Refusal::Conflict(format!(
                    "pool {pool:?} backend {addr} is still being removed: add it again once it is gone"
                )),
                None => Refusal::Conflict(format!("pool {pool:?} already has backend {addr}")),
            });
        }
        let entry = Entry {
            op: Membership::Add,
            weight: Some(weight),
            backup,
            ..Entry::default()
        };
        self.commit(self.overlay.with(pool, addr, entry))?;
        let b = Arc::new(Backend::new(pool, addr, weight, BackendState::Starting));
        b.set_backup(backup);
        self.members
            .get_mut(pool)
            .expect("checked above")
            .push(b.clone());
        self.publish();
        tracing::info!(pool, backend = %addr, weight, "backend added (starting)");
        Ok(b)
    }

    /// Stops new connections to a backend; existing ones continue. Persisted: it comes back
    /// draining after a restart, until [`State::ready`].
    pub fn drain(&mut self, pool: &str, addr: &str) -> Result<Arc<Backend>, Refusal> {
        let b = self.find(pool, addr)?;
        if self.leaving(&b).is_some() {
            return Ok(b); // already draining on its way out
        }
        let mut e = self.overlay.entry(pool, b.addr);
        e.drained = true;
        self.commit(self.overlay.with(pool, b.addr, e))?;
        if b.state() != BackendState::Draining {
            b.set_state(BackendState::Draining);
            self.publish();
            tracing::info!(pool, backend = %b.addr, active = b.active(), "backend draining");
        }
        Ok(b)
    }

    /// Undoes a drain: the backend is routable again if its health checks pass.
    pub fn ready(&mut self, pool: &str, addr: &str) -> Result<Arc<Backend>, Refusal> {
        let b = self.find(pool, addr)?;
        self.not_leaving(&b)?;
        let mut e = self.overlay.entry(pool, b.addr);
        e.drained = false;
        self.commit(self.overlay.with(pool, b.addr, e))?;
        if b.state() == BackendState::Draining {
            let next = if b.is_healthy() {
                BackendState::Up
            } else {
                BackendState::Down
            };
            b.set_state(next);
            self.publish();
            tracing::info!(pool, backend = %b.addr, state = next.as_str(), "backend ready (drain undone)");
        }
        Ok(b)
    }

    /// Scale-in protection for a backend, as ECS task scale-in protection: `enabled` for
    /// `expires_in` (default 2 h, at most 48 h), or off. Persisted; a DELETE or a drain an
    /// operator asks for still goes through. Returns the protection's end (Unix seconds).
    pub fn protect(
        &mut self,
        pool: &str,
        addr: &str,
        enabled: bool,
        expires_in: Option<std::time::Duration>,
    ) -> Result<(Arc<Backend>, Option<u64>), Refusal> {
        let b = self.find(pool, addr)?;
        self.not_leaving(&b)?;
        let until = if enabled {
            let d = expires_in.unwrap_or(DEFAULT_PROTECTION);
            if d.is_zero() || d > MAX_PROTECTION {
                return Err(Refusal::BadRequest(format!(
                    "expires_in: {} is out of range: from 1s to 48h",
                    crate::config::format_duration(d)
                )));
            }
            Some(crate::backend::protection_end(
                crate::backend::unix_now_ms(),
                d,
            ))
        } else {
            None
        };
        let mut e = self.overlay.entry(pool, b.addr);
        e.protected_until = until;
        self.commit(self.overlay.with(pool, b.addr, e))?;
        b.set_protected_until(until.unwrap_or(0));
        tracing::info!(pool, backend = %b.addr, protected = enabled, until = ?until, "scale-in protection set");
        Ok((b, until))
    }

    /// Starts removing a backend: persisted as removed, drained now; the caller finishes the
    /// removal with [`State::finish_removal`] once it has no connections (or time is up).
    /// A second DELETE of a backend already being deleted changes nothing and gives `None`:
    /// the removal under way, with its own drain timeout, goes on.
    pub fn remove(
        &mut self,
        pool: &str,
        addr: &str,
    ) -> Result<(Arc<Backend>, Option<Departure>), Refusal> {
        let b = self.find(pool, addr)?;
        if self.leaving(&b) == Some(Leaving::Deleted) {
            return Ok((b, None));
        }
        let entry = Entry {
            op: Membership::Remove,
            ..Entry::default()
        };
        self.commit(self.overlay.with(pool, b.addr, entry))?;
        let d = self.depart(&b, Leaving::Deleted);
        b.set_state(BackendState::Draining);
        self.publish();
        tracing::info!(pool, backend = %b.addr, active = b.active(), "backend removing: draining first");
        Ok((b, Some(d)))
    }

    /// Whether removal `d` of `b` is still the one in force.
    pub fn still_leaving(&self, b: &Arc<Backend>, d: Departure) -> bool {
        self.leaving
            .iter()
            .any(|(x, _, id)| Arc::ptr_eq(x, b) && *id == d)
    }

    /// Takes a drained backend out of its pool; connections it still has are closed. Does
    /// nothing if removal `d` is no longer in force (a reload kept the backend, or a DELETE
    /// replaced the removal).
    pub fn finish_removal(&mut self, b: &Arc<Backend>, d: Departure) {
        if !self.still_leaving(b, d) {
            return;
        }
        self.leaving.retain(|(x, _, _)| !Arc::ptr_eq(x, b));
        if let Some(list) = self.members.get_mut(&b.pool) {
            let before = list.len();
            list.retain(|x| !Arc::ptr_eq(x, b));
            if list.len() != before {
                b.set_removed();
                self.publish();
                tracing::info!(pool = %b.pool, backend = %b.addr, remaining_connections = b.active(), "backend removed");
            }
        }
        // Gone, and the file does not list it: the tombstone says nothing any more.
        if !listed(&self.config, &self.resolved, &b.pool, b.addr)
            && self.overlay.entry(&b.pool, b.addr).op == Membership::Remove
        {
            let next = self.overlay.with(&b.pool, b.addr, Entry::default());
            if let Err(e) = self.commit(next) {
                tracing::warn!(pool = %b.pool, backend = %b.addr, error = e.message(), "cannot drop the removed backend's entry from the state file (harmless: the next reload drops it)");
            }
        }
    }

    pub fn set_weight(
        &mut self,
        pool: &str,
        addr: &str,
        weight: u32,
    ) -> Result<Arc<Backend>, Refusal> {
        let b = self.find(pool, addr)?;
        check_weight(weight)?;
        self.not_leaving(&b)?;
        let mut e = self.overlay.entry(pool, b.addr);
        e.weight = Some(weight);
        self.commit(self.overlay.with(pool, b.addr, e))?;
        b.set_weight(weight);
        self.publish();
        tracing::info!(pool, backend = %b.addr, weight, "weight changed");
        Ok(b)
    }

    /// A health verdict changed. Draining and removed backends keep their state (the verdict
    /// is kept for when a drain is undone).
    pub fn health_changed(&mut self, b: &Arc<Backend>, healthy: bool, reason: &str) {
        let member = self
            .members
            .get(&b.pool)
            .is_some_and(|l| l.iter().any(|x| Arc::ptr_eq(x, b)));
        if !member {
            return;
        }
        b.set_healthy(healthy);
        if b.state() == BackendState::Draining {
            return;
        }
        let next = if healthy {
            BackendState::Up
        } else {
            BackendState::Down
        };
        if b.state() != next {
            let from = b.state();
            b.set_state(next);
            self.publish();
            if healthy {
                tracing::info!(pool = %b.pool, backend = %b.addr, from = from.as_str(), reason, "backend up");
            } else {
                tracing::warn!(pool = %b.pool, backend = %b.addr, from = from.as_str(), reason, "backend down");
            }
        }
    }

    /// Applies a new config over the runtime state (see [`Entry`] for the rules). Listeners,
    /// and settings read only at start, cannot change without a restart. Returns the
    /// backends that joined (to check) and those that left (to drain, then remove).
    pub fn reload(&mut self, config: Config) -> Result<Reloaded, String> {
        let same_listeners = config.listeners.len() == self.config.listeners.len()
            && config
                .listeners
                .iter()
                .zip(&self.config.listeners)
                .all(|(a, b)| Config::same_socket(a, b));
        if !same_listeners {
            return Err(
                "listeners were added, removed, rebound or given another backlog, tcp_congestion or tcp_keepalive: restart ringlb (or serve --upgrade) to apply that".into(),
            );
        }
        if let Some(what) = Config::needs_restart(&self.config, &config) {
            return Err(format!(
                "{what} changed, which only a restart applies: restart ringlb, or put it back"
            ));
        }
        // Everything below is decided before anything is changed; only then is it applied.
        let deleting: Vec<(String, SocketAddr)> = self
            .leaving
            .iter()
            .filter(|(_, why, _)| *why == Leaving::Deleted)
            .map(|(b, _, _)| (b.pool.clone(), b.addr))
            .collect();
        let overlay = self.overlay.pruned(&config, &self.resolved, &deleting);
        if overlay != self.overlay
            && let Some(p) = &self.state_file
        {
            overlay.save(p)?;
        }
        let mut members = members_of(&config, &overlay, &self.resolved, &self.members);
        let member_of = |m: &Members, b: &Arc<Backend>| {
            m.get(&b.pool)
                .is_some_and(|l| l.iter().any(|x| Arc::ptr_eq(x, b)))
        };
        let joined: Vec<Arc<Backend>> = members
            .values()
            .flatten()
            .filter(|b| !member_of(&self.members, b))
            .cloned()
            .collect();
        // A backend a reload dropped and this one lists again stays: its removal is off.
        let mut leaving = Vec::new();
        for (b, why, d) in std::mem::take(&mut self.leaving) {
            if why == Leaving::Dropped && member_of(&members, &b) {
                let state = if b.is_healthy() {
                    BackendState::Up
                } else {
                    BackendState::Down
                };
                if b.state() == BackendState::Draining && !overlay.entry(&b.pool, b.addr).drained {
                    b.set_state(state);
                }
                tracing::info!(pool = %b.pool, backend = %b.addr, "backend listed again: no longer leaving");
                continue;
            }
            leaving.push((b, why, d));
        }
        // Backends the new config drops stay, draining, until they are empty. Those already
        // leaving keep their own timer.
        let mut left = Vec::new();
        for b in self.members.values().flatten() {
            if member_of(&members, b) {
                continue;
            }
            b.set_state(BackendState::Draining);
            match members.get_mut(&b.pool) {
                Some(l) => l.push(b.clone()),
                // The whole pool went away: nothing routes to it any more.
                None => b.set_removed(),
            }
            if !leaving.iter().any(|(x, _, _)| Arc::ptr_eq(x, b)) {
                self.departures += 1;
                let d = Departure(self.departures);
                leaving.push((b.clone(), Leaving::Dropped, d));
                left.push((b.clone(), d));
            }
        }
        self.leaving = leaving;
        self.overlay = overlay;
        self.members = members;
        self.config = config;
        self.publish();
        Ok((joined, left))
    }

    /// Every pool has a routable backend; otherwise the pools that have none.
    pub fn pools_without_backends(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, l)| !l.iter().any(|b| b.is_routable()))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn check_weight(weight: u32) -> Result<(), Refusal> {
    if weight == 0 || weight > MAX_WEIGHT {
        return Err(Refusal::BadRequest(format!(
            "weight {weight} is out of range 1..={MAX_WEIGHT}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(
            "t.toml",
            &format!(
                "{extra}\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[pools.p]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}, {{ addr = \"127.0.0.1:9002\" }}]\n"
            ),
        )
        .unwrap()
    }

    #[test]
    fn refusals_change_nothing() {
        let mut s = State::new(config(""), 1).unwrap();
        let before = s.shared.snapshot.load_full();
        assert!(matches!(
            s.add("nope", "127.0.0.1:9003", None, false),
            Err(Refusal::NotFound(_))
        ));
        assert!(matches!(
            s.add("p", "127.0.0.1:9001", None, false),
            Err(Refusal::Conflict(_))
        ));
        assert!(matches!(
            s.add("p", "not-an-addr", None, false),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            s.add("p", "127.0.0.1:9003", Some(0), false),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            s.set_weight("p", "127.0.0.1:9009", 2),
            Err(Refusal::NotFound(_))
        ));
        assert!(
            Arc::ptr_eq(&before, &s.shared.snapshot.load_full()),
            "a refusal published a snapshot"
        );
        assert_eq!(s.members["p"].len(), 2);
    }

    #[test]
    fn a_reload_publishes_a_new_busy_poll() {
        use std::time::Duration;
        let mut s = State::new(config(""), 1).unwrap();
        assert_eq!(s.shared.snapshot.load().busy_poll, Duration::ZERO);
        s.reload(config("busy_poll = \"50us\"")).unwrap();
        assert_eq!(
            s.shared.snapshot.load().busy_poll,
            Duration::from_micros(50)
        );
    }

    #[test]
    fn overlay_persists_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let extra = format!("state_file = {:?}", file.display().to_string());
        let mut s = State::new(config(&extra), 1).unwrap();
        s.add("p", "127.0.0.1:9003", Some(3), false).unwrap();
        s.add("p", "127.0.0.1:9004", None, true).unwrap();
        let (b, d) = s.remove("p", "127.0.0.1:9001").unwrap();
        s.finish_removal(&b, d.unwrap());
        s.set_weight("p", "127.0.0.1:9002", 5).unwrap();
        let mut again = State::new(config(&extra), 1).unwrap();
        // A backup added at runtime is still one after the restart.
        let backups: Vec<String> = again.members["p"]
            .iter()
            .filter(|b| b.is_backup())
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(backups, vec!["127.0.0.1:9004".to_string()]);
        let (b, d) = again.remove("p", "127.0.0.1:9004").unwrap();
        again.finish_removal(&b, d.unwrap());
        let got: Vec<(String, u32, BackendState)> = again.members["p"]
            .iter()
            .map(|b| (b.addr.to_string(), b.weight(), b.state()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:9002".into(), 5, BackendState::Up),
                ("127.0.0.1:9003".into(), 3, BackendState::Starting)
            ]
        );
        // Added then removed at runtime: no trace left.
        let mut s = again;
        let (b, d) = s.remove("p", "127.0.0.1:9003").unwrap();
        s.finish_removal(&b, d.unwrap());
        assert!(
            !Overlay::load(&file).unwrap().pools["p"]
                .contains_key(&"127.0.0.1:9003".parse().unwrap())
        );
    }

    fn addrs(s: &State) -> Vec<(String, u32, BackendState)> {
        s.members["p"]
            .iter()
            .map(|b| (b.addr.to_string(), b.weight(), b.state()))
            .collect()
    }

    /// The issue's sequence: DELETE a backend the file lists, POST it again, DELETE it again,
    /// then reload or restart. It once came back, because "added then removed" left no trace
    /// even where the file lists the backend.
    #[test]
    fn delete_add_delete_of_a_listed_backend_stays_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let extra = format!("state_file = {:?}", file.display().to_string());
        let mut s = State::new(config(&extra), 1).unwrap();
        let (b, d) = s.remove("p", "127.0.0.1:9001").unwrap();
        s.finish_removal(&b, d.unwrap());
        s.add("p", "127.0.0.1:9001", Some(2), false).unwrap();
        let (b, d) = s.remove("p", "127.0.0.1:9001").unwrap();
        s.finish_removal(&b, d.unwrap());
        s.reload(config(&extra)).unwrap();
        assert_eq!(
            addrs(&s),
            vec![("127.0.0.1:9002".into(), 1, BackendState::Up)]
        );
        let again = State::new(config(&extra), 1).unwrap();
        assert_eq!(
            addrs(&again),
            vec![("127.0.0.1:9002".into(), 1, BackendState::Up)]
        );
    }

    #[test]
    fn a_drain_survives_a_restart_and_a_reload_and_ready_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let extra = format!("state_file = {:?}", file.display().to_string());
        let mut s = State::new(config(&extra), 1).unwrap();
        s.drain("p", "127.0.0.1:9001").unwrap();
        s.reload(config(&extra)).unwrap();
        assert_eq!(
            s.find("p", "127.0.0.1:9001").unwrap().state(),
            BackendState::Draining
        );
        let mut s = State::new(config(&extra), 1).unwrap();
        let b = s.find("p", "127.0.0.1:9001").unwrap();
        assert_eq!(b.state(), BackendState::Draining);
        assert!(!b.is_healthy(), "restored draining: no verdict yet");
        // Checks pass while it drains; ready then makes it routable at once.
        s.health_changed(&b, true, "test");
        assert_eq!(b.state(), BackendState::Draining);
        s.ready("p", "127.0.0.1:9001").unwrap();
        assert_eq!(b.state(), BackendState::Up);
        assert_eq!(
            Overlay::load(&file).unwrap(),
            Overlay::default(),
            "nothing left to say"
        );
    }

    #[test]
    fn a_reload_keeps_a_delete_in_progress_and_drops_entries_that_say_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let extra = format!("state_file = {:?}", file.display().to_string());
        let mut s = State::new(config(&extra), 1).unwrap();
        let (b, d) = s.remove("p", "127.0.0.1:9001").unwrap();
        let d = d.unwrap();
        s.set_weight("p", "127.0.0.1:9002", 4).unwrap();
        assert!(matches!(
            s.set_weight("p", "127.0.0.1:9001", 3),
            Err(Refusal::Conflict(_))
        ));
        // The file edits the backend being deleted: the DELETE goes on.
        let edited = config(&extra).to_toml().replace(
            "addr = \"127.0.0.1:9001\"\nweight = 1",
            "addr = \"127.0.0.1:9001\"\nweight = 9",
        );
        let edited = Config::parse("t", &edited).unwrap();
        assert_eq!(edited.pools["p"].backends.get_ref()[0].weight.get_ref(), &9);
        let (_, left) = s.reload(edited).unwrap();
        assert!(left.is_empty(), "a DELETE in progress keeps its own timer");
        assert!(s.still_leaving(&b, d));
        assert_eq!(b.state(), BackendState::Draining);
        s.finish_removal(&b, d);
        assert_eq!(
            addrs(&s),
            vec![("127.0.0.1:9002".into(), 4, BackendState::Up)]
        );
        // A file without 9002 drops its weight entry; with it again, the file's weight rules.
        let only_9001 = Config::parse(
            "t",
            &config(&extra).to_toml().replace(
                "[[pools.p.backends]]\naddr = \"127.0.0.1:9002\"\nweight = 1\n",
                "",
            ),
        )
        .unwrap();
        assert_eq!(only_9001.pools["p"].backends.get_ref().len(), 1);
        let (_, left) = s.reload(only_9001).unwrap();
        assert_eq!(left.len(), 1);
        // Listed again before its drain ended: it stays, and is no longer leaving.
        s.reload(config(&extra)).unwrap();
        assert!(!s.still_leaving(&left[0].0, left[0].1));
        assert_eq!(
            addrs(&s),
            vec![("127.0.0.1:9002".into(), 1, BackendState::Up)]
        );
        assert_eq!(
            Overlay::load(&file).unwrap().pools["p"].len(),
            1,
            "only 9001's tombstone"
        );
    }

    #[test]
    fn scale_in_protection_persists_expires_and_never_applies_to_a_leaving_backend() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let extra = format!("state_file = {:?}", file.display().to_string());
        let mut s = State::new(config(&extra), 1).unwrap();
        let (b, until) = s.protect("p", "127.0.0.1:9001", true, None).unwrap();
        let left = b.protection_left().unwrap();
        // The end is rounded up to the second: never less than asked, at most 1 s more.
        assert!((7190..=7200).contains(&left), "default 2h: {left}");
        assert!(until.is_some());
        for bad in [Duration::ZERO, Duration::from_secs(48 * 3600 + 1)] {
            assert!(matches!(
                s.protect("p", "127.0.0.1:9001", true, Some(bad)),
                Err(Refusal::BadRequest(_))
            ));
        }
        // Across a restart, and a reload.
        let mut s = State::new(config(&extra), 1).unwrap();
        assert!(
            s.find("p", "127.0.0.1:9001")
                .unwrap()
                .protection_left()
                .is_some()
        );
        s.reload(config(&extra)).unwrap();
        let b = s.find("p", "127.0.0.1:9001").unwrap();
        assert!(b.protection_left().is_some());
        // Off again: nothing left to say.
        s.protect("p", "127.0.0.1:9001", false, None).unwrap();
        assert!(b.protection_left().is_none());
        assert_eq!(Overlay::load(&file).unwrap(), Overlay::default());
        // An expired protection says nothing either.
        let e = Entry {
            protected_until: Some(1),
            ..Entry::default()
        };
        assert!(e.is_empty());
        // A drain an operator asks for still goes through; a backend on its way out cannot
        // be protected.
        s.protect("p", "127.0.0.1:9002", true, Some(Duration::from_secs(60)))
            .unwrap();
        s.drain("p", "127.0.0.1:9002").unwrap();
        assert_eq!(
            s.find("p", "127.0.0.1:9002").unwrap().state(),
            BackendState::Draining
        );
        s.remove("p", "127.0.0.1:9001").unwrap();
        assert!(matches!(
            s.protect("p", "127.0.0.1:9001", true, None),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn state_files_of_earlier_versions_read_the_same() {
        let old = r#"{"pools":{"p":{"127.0.0.1:9001":{"op":"remove"},"127.0.0.1:9002":{"op":"weight","weight":5},"127.0.0.1:9003":{"op":"add","weight":3}}}}"#;
        let o: Overlay = serde_json::from_str(old).unwrap();
        let p = &o.pools["p"];
        assert_eq!(p[&"127.0.0.1:9001".parse().unwrap()].op, Membership::Remove);
        assert_eq!(
            p[&"127.0.0.1:9002".parse().unwrap()],
            Entry {
                op: Membership::Keep,
                weight: Some(5),
                ..Entry::default()
            }
        );
        assert_eq!(p[&"127.0.0.1:9003".parse().unwrap()].op, Membership::Add);
    }

    #[test]
    fn a_failed_persist_applies_nothing() {
        let mut s = State::new(config("state_file = \"/nonexistent-dir/state.json\""), 1).unwrap();
        assert!(matches!(
            s.add("p", "127.0.0.1:9003", None, false),
            Err(Refusal::Internal(_))
        ));
        assert_eq!(s.members["p"].len(), 2);
    }

    #[test]
    fn health_does_not_override_draining() {
        let mut s = State::new(config(""), 1).unwrap();
        let b = s.drain("p", "127.0.0.1:9001").unwrap();
        s.health_changed(&b, true, "test");
        assert_eq!(b.state(), BackendState::Draining);
        let other = s.find("p", "127.0.0.1:9002").unwrap();
        s.health_changed(&other, false, "test");
        assert_eq!(other.state(), BackendState::Down);
        assert_eq!(s.pools_without_backends(), vec!["p".to_string()]);
    }
}
