//! ringlb: a layer-4 TCP load balancer for Linux on io_uring.
//!
//! # Layout
//! From the ground up: each room imports only rooms listed above it here, never one below
//! (no circles).
//! - [`sys`]: the OS layer: the raw system calls std and socket2 lack (sockets, doorbells,
//!   CPUs, the open-file limit, descriptor passing, process-group signals). With
//!   `proxy/ring.rs`, the only place `unsafe` is allowed (the crate denies it elsewhere).
//! - [`backend`]: `Backend`: an address and the atomics every worker shares (state, weight,
//!   limit, slow start, counters). Imports nothing of ours.
//! - [`routes`]: source allow/deny (CIDRs as sorted ranges) and the SNI route table.
//! - [`atomic_file`]: temp file, fsync, rename: how both state files are written.
//! - [`notify`]: systemd readiness (READY=1 once listeners accept, STOPPING=1, RELOADING=1).
//! - [`config`]: the TOML schema, one file per section (listener, pool, health) with its
//!   ranges and `validate_*`, and `values` (durations, rates, bounded numbers, located
//!   errors) that the scaler's config shares.
//! - [`balance`]: backend selection behind one trait: round robin, least connections,
//!   ring hash (xxh3, bounded loads) and Maglev, one file each; one filter (up, untried,
//!   below its limit) applied outside them; built from a resolved [`balance::Choice`].
//! - [`accesslog`]: one record per connection; per-worker bounded queues drained by one
//!   logger thread (text or JSON, stderr or a file reopened on SIGHUP/SIGUSR1).
//! - [`sources`]: per-source limits (connections and rate per client address), a
//!   lock-free table of atomics shared by the workers.
//! - [`health`]: the rise/fall state machine, the probes, one file per protocol
//!   (`dialogue`: send/expect over a bounded buffer; `http`, `redis`, `postgres`, `mysql`),
//!   and `background`: one backend's check loop.
//! - [`http_client`]: hyper's client, bounded in time and body size, and the admin API's
//!   503 retry: what the scaler and `ctl` share.
//! - [`cpus`]: how many workers `workers = 0` means: affinity capped by the cgroup quota.
//! - [`snapshot`]: `Pool`, `Listener`, the `Snapshot` workers read, the pools' shared
//!   queues, and `Shared` (what the control plane and the workers hold in common).
//! - [`proxy`]: the data plane. `event_loop` runs a worker's loop and hands each completion
//!   to its stage; `worker` is the state they share; `tick` the timeouts; `table` the
//!   connection slab; `op` the user data; `bufqueue` a direction's buffers; one file per
//!   stage, in a connection's order: `accept` (admission), `accept_proxy` (a PROXY header
//!   from a front balancer), `inspect` (SNI, with `clienthello`), `queue` (the pools'
//!   queues and the doorbell, with `waiters`), `connect` (+PROXY header), `relay`,
//!   `close`; `ring` (io_uring, its buffer ring and the fixed-file mirror); `preflight`
//!   explains what blocks io_uring.
//! - [`metrics`]: metric names, the Prometheus recorder, the scrape.
//! - [`control`]: the control plane on its own tokio thread: `state` (membership, runtime
//!   changes, persistence), `admin` (HTTP API, probes, /metrics), `discovery` (DNS-named
//!   backends), `upgrade` (socket handover to a successor), `rebalance` (which backends
//!   are over their share, and how many idle connections workers may close for it), and
//!   the drains.
//! - [`scaler`]: `ringlb scale`, the companion autoscaler: `source` (readings), `policy`
//!   (target tracking, step, simple, one function each, combined by the largest wish),
//!   `schedule` (scheduled min/max), `actuator` (process, exec; process groups, adoption
//!   after a restart), `plot` (events and their SVG timeline); talks HTTP only.
//! - [`server`]: `ringlb serve`: starts the workers, handles signals (SIGTERM drains,
//!   SIGHUP reloads) and shuts down.
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
