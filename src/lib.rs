//! ringlb: a layer-4 TCP load balancer for Linux on io_uring.
//!
//! # Layout
//! - [`config`]: the TOML schema, one file per section (listener, pool, health) with its
//!   ranges and `validate_*`, and `values` (durations, bounded numbers, located errors) that
//!   the scaler's config shares.
//! - [`backend`]: `Backend`: an address and the atomics every worker shares (state, weight,
//!   limit, slow start, counters). Imports nothing of ours.
//! - [`snapshot`]: `Pool`, `Listener`, the `Snapshot` workers read, the pools' queues, and
//!   `Shared` (what the control plane and the workers hold in common).
//! - [`sources`]: per-source limits (connections and rate per client address), a
//!   lock-free table of atomics shared by the workers.
//! - [`routes`]: source allow/deny (CIDRs as sorted ranges) and the SNI route table.
//! - [`balance`]: backend selection behind one trait: round robin, least connections,
//!   ring hash (xxh3, bounded loads) and Maglev, one file each; one filter (up, untried,
//!   below its limit) applied outside them.
//! - [`proxy`]: the data plane. `worker` runs the per-core loop and dispatch; `table` the
//!   connection slab and user data; `bufqueue` a direction's buffers; one file per stage:
//!   `accept` (admission, queue), `accept_proxy` (a PROXY header read from a front
//!   balancer), `inspect` (SNI, with `clienthello`), `connect` (+PROXY header), `relay`,
//!   `close`; `ring` (io_uring, its buffer ring and the fixed-file mirror) and `sys` (sockets,
//!   rlimit, affinity, fd passing) hold the only `unsafe` (the crate denies it elsewhere);
//!   `preflight` explains what blocks io_uring.
//! - [`cpus`]: how many CPUs `workers = 0` means: affinity capped by the cgroup quota.
//! - [`health`]: the rise/fall state machine and the probes, one file per protocol
//!   (`dialogue`: send/expect over a bounded buffer; `http`, `redis`, `postgres`, `mysql`).
//! - [`metrics`]: metric names, the Prometheus recorder, the scrape.
//! - [`control`]: the control plane on its own tokio thread: `state` (membership, runtime
//!   changes, persistence), `admin` (HTTP API, probes, /metrics), `discovery` (DNS-named
//!   backends), `upgrade` (socket handover to a successor), `rebalance` (which backends
//!   are over their share, and how many idle connections workers may close for it),
//!   health-check and drain tasks.
//! - [`server`]: `ringlb serve`: starts the workers, handles signals (SIGTERM drains,
//!   SIGHUP reloads) and shuts down.
//! - [`scaler`]: `ringlb scale`, the companion autoscaler: `source` (readings, and hyper's
//!   client), `policy` (target tracking, step, simple, one function each, combined by the
//!   largest wish), `schedule` (scheduled min/max), `actuator` (process, exec; process
//!   groups, adoption after a restart), `plot` (events and their SVG timeline); talks HTTP
//!   only.
//! - [`accesslog`]: one record per connection; per-worker bounded queues drained by one
//!   logger thread (text or JSON, stderr or a file reopened on SIGHUP/SIGUSR1).
//! - [`atomic_file`]: temp file, fsync, rename: how both state files are written.
//! - [`notify`]: systemd readiness (READY=1 once listeners accept, STOPPING=1, RELOADING=1).
//! - [`ctl`]: `ringlb ctl`, a CLI over the admin API (tables or JSON), nothing but HTTP.
//! - [`demo`]: `ringlb demo`: built-in backends plus a balancer on loopback.
//!
//! Threads: one worker per core, each with its own ring and SO_REUSEPORT listeners; one
//! control thread (tokio); the main thread waits for signals. Workers share only the snapshot (arc-swap, lock-free to
//! read) and per-backend atomics.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod accesslog;
pub(crate) mod atomic_file;
pub mod backend;
pub mod balance;
pub mod config;
pub mod control;
pub(crate) mod cpus;
pub mod ctl;
pub mod demo;
pub(crate) mod health;
pub(crate) mod http_client;
pub(crate) mod metrics;
pub(crate) mod notify;
pub mod proxy;
pub(crate) mod routes;
pub mod scaler;
pub mod server;
pub(crate) mod snapshot;
pub(crate) mod sources;
pub mod sys;
