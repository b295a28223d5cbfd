//! Actuators: how the scaler makes and unmakes backends.
//!
//! - `process`: launches local backends from a command template with `{port}` (ports from a
//!   range), stops them with SIGTERM and, after a grace period, SIGKILL; reaps them, and
//!   reports those that died on their own so they can be replaced.
//! - `exec`: user commands, e.g. a cloud CLI or `kubectl scale`. `up` runs with `{count}`
//!   (the desired count) and prints the new backend's `IP:PORT` as its last line; `down` runs
//!   with `{addr}` and `{count}` once that backend has drained. They run on the async
//!   runtime (tokio::process), so the scaler's probes and metrics answer while a slow `up`
//!   waits for its pod; each is killed (its whole process group) past `timeout`, and an `up`
//!   is stopped when the scaler is (see [`Canceller`]). A `down` is not: it finishes (within
//!   `timeout`), or a drained backend would be left running unknown to anyone.
//!
//! Launched processes run in a process group of their own, so a signal to the scaler's
//! terminal or unit (Ctrl-C sends SIGINT to the whole foreground group) never reaches them;
//! they are stopped by signalling their group with kill(2). With a `state_file`, what was
//! launched (address, pid, the process's start time from /proc) is written after every
//! change, and a restarted scaler adopts the processes that still run, checking the start
//! time so that a reused pid is never taken for one of ours.
//!
//! Owns: child processes and commands. Must not touch: the balancer (mod.rs registers and
//! deregisters through the admin API).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActuatorConfig {
    Process {
        /// Run by `sh -c "exec …"`, with `{port}` replaced.
        command: String,
        /// Ports to use, "9200-9299".
        ports: String,
        #[serde(default = "localhost")]
        host: IpAddr,
        /// SIGTERM, then SIGKILL after this long.
        #[serde(
            default = "default_grace",
            serialize_with = "crate::config::values::duration_serde::serialize",
            deserialize_with = "crate::config::values::duration_serde::deserialize"
        )]
        stop_grace: Duration,
    },
    Exec {
        up: String,
        down: String,
        /// An `up` or `down` still running after this long is killed (its process group).
        #[serde(
            default = "default_exec_timeout",
            serialize_with = "crate::config::values::duration_serde::serialize",
            deserialize_with = "crate::config::values::duration_serde::deserialize"
        )]
        timeout: Duration,
    },
}

fn default_exec_timeout() -> Duration {
    Duration::from_secs(600)
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// Parses "9200-9299".
pub fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("ports {s:?}: expected \"FIRST-LAST\""))?;
    let (a, b): (u16, u16) = (
        a.trim()
            .parse()
            .map_err(|_| format!("ports {s:?}: bad number"))?,
        b.trim()
            .parse()
            .map_err(|_| format!("ports {s:?}: bad number"))?,
    );
    if a == 0 || a > b {
        return Err(format!("ports {s:?}: empty range"));
    }
    Ok((a, b))
}

/// A backend process: a child of this scaler, or one a previous scaler launched and this
/// one adopted (not our child: it cannot be waited for, only watched through /proc).
pub enum Proc {
    Child(Child),
    Adopted { pid: u32, start: u64 },
}

impl Proc {
    pub fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Adopted { pid, .. } => *pid,
        }
    }

    /// How it ended, if it has (a child is reaped here).
    fn exited(&mut self) -> Option<String> {
        match self {
            Proc::Child(c) => match c.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
            Proc::Adopted { pid, start } => (start_time(*pid) != Some(*start))
                .then(|| "exited (adopted: status unknown)".into()),
        }
    }

    /// Signals the process's whole group (it leads one: see `launch`).
    fn signal(&self, sig: i32) {
        if !crate::sys::signal_group(self.pid(), sig) {
            crate::sys::signal(self.pid(), sig);
        }
    }

    /// SIGKILL, and reap it if it is our child.
    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Proc::Child(c) = self {
            let _ = c.wait();
        }
    }
}

/// A process's start time (field 22 of /proc/PID/stat, in clock ticks since boot); `None` if
/// there is no such process, or it is a zombie. With the pid it names one process for good:
/// a pid the kernel reuses comes with another start time.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// One entry of the scaler's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    pub addr: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Deleted from the balancer and draining: stopped once the balancer lets it go.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

pub struct Actuator {
    cfg: ActuatorConfig,
    children: BTreeMap<SocketAddr, Proc>,
    /// Processes being stopped: SIGKILL at the deadline.
    stopping: Vec<(Proc, Instant)>,
    /// Where the next port search starts: ports are used in turn, so a backend that just
    /// died is not replaced on its own port while the balancer may still list it.
    next_port: u16,
    /// Every backend made and not yet stopped, in launch order.
    order: Vec<SocketAddr>,
    /// Set when the scaler stops: a running `up` is killed.
    stopping_flag: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Stops what an actuator runs for a launch (`exec`'s `up`), from outside the evaluation
/// that awaits it: a SIGTERM to the scaler must not wait out a slow `up`.
#[derive(Clone)]
pub struct Canceller(Arc<tokio::sync::watch::Sender<bool>>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }
}

impl Actuator {
    pub fn new(cfg: ActuatorConfig) -> Result<Actuator, String> {
        use crate::config::values::{US_H, US_S, check_range};
        // Ranges are checked here, not by serde: inside the tagged `[actuator]` table serde
        // no longer knows the key, and the message must name it.
        match &cfg {
            ActuatorConfig::Process {
                ports,
                command,
                stop_grace,
                ..
            } => {
                port_range(ports)?;
                if !command.contains("{port}") {
                    return Err("actuator.command must contain {port}".into());
                }
                check_range(*stop_grace, 0, US_H)
                    .map_err(|e| format!("actuator.stop_grace: {e}"))?;
            }
            ActuatorConfig::Exec { timeout, .. } => {
                check_range(*timeout, US_S, US_H).map_err(|e| format!("actuator.timeout: {e}"))?;
            }
        }
        Ok(Actuator {
            cfg,
            children: BTreeMap::new(),
            stopping: Vec::new(),
            next_port: 0,
            order: Vec::new(),
            stopping_flag: Arc::new(tokio::sync::watch::Sender::new(false)),
        })
    }

    /// What stops a launch in progress (see [`Canceller`]).
    pub fn canceller(&self) -> Canceller {
        Canceller(self.stopping_flag.clone())
    }

    /// Backends this actuator made and has not stopped, oldest first.
    pub fn owned(&self) -> Vec<SocketAddr> {
        self.order.clone()
    }

    /// Pids of the running backend processes.
    pub fn pids(&self) -> Vec<u32> {
        self.children.values().map(|c| c.pid()).collect()
    }

    /// Makes one backend; returns its address. `count` is the desired total (for `exec`).
    pub async fn launch(&mut self, count: u32, skip: &[SocketAddr]) -> Result<SocketAddr, String> {
        match &self.cfg {
            ActuatorConfig::Process {
                command,
                ports,
                host,
                ..
            } => {
                let (first, last) = port_range(ports)?;
                let start = self.next_port.clamp(first, last);
                let port = (start..=last)
                    .chain(first..start)
                    .find(|&p| {
                        let a = SocketAddr::new(*host, p);
                        !self.children.contains_key(&a)
                            && !skip.contains(&a)
                            && TcpListener::bind(a).is_ok()
                    })
                    .ok_or_else(|| format!("no free port left in {ports}"))?;
                self.next_port = port.wrapping_add(1);
                let addr = SocketAddr::new(*host, port);
                let cmd = command
                    .replace("{port}", &port.to_string())
                    .replace("{host}", &host.to_string());
                // A process group of its own: Ctrl-C on the scaler's terminal (SIGINT to the
                // foreground group) or a signal to the scaler's unit must not reach it.
                let child = Command::new("sh")
                    .args(["-c", &format!("exec {cmd}")])
                    .stdin(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
                tracing::info!(backend = %addr, pid = child.id(), command = %cmd, "launched backend process");
                self.children.insert(addr, Proc::Child(child));
                self.order.push(addr);
                Ok(addr)
            }
            ActuatorConfig::Exec { up, timeout, .. } => {
                let cmd = up.replace("{count}", &count.to_string());
                let out = run(&cmd, *timeout, Some(self.stopping_flag.subscribe())).await?;
                let last = out
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                let addr: SocketAddr = last.parse().map_err(|_| {
                    format!(
                        "{cmd:?} must print the new backend's IP:PORT last; it printed {:?}",
                        crate::config::values::clip(last, 200)
                    )
                })?;
                tracing::info!(backend = %addr, command = %cmd, "exec: backend up");
                self.order.push(addr);
                Ok(addr)
            }
        }
    }

    /// Stops a drained backend: SIGTERM now, SIGKILL after the grace period (see `tick`);
    /// `exec` runs `down` (to its end or its timeout). False if `down` failed: the backend
    /// is still ours (and may still run), for the caller to try again.
    pub async fn stop(&mut self, addr: SocketAddr, count: u32) -> bool {
        match &self.cfg {
            ActuatorConfig::Process { .. } => {
                self.stop_process(addr);
                true
            }
            ActuatorConfig::Exec { down, timeout, .. } => {
                let cmd = down
                    .replace("{addr}", &addr.to_string())
                    .replace("{count}", &count.to_string());
                match run(&cmd, *timeout, None).await {
                    Ok(_) => {
                        tracing::info!(backend = %addr, command = %cmd, "exec: backend down");
                        self.order.retain(|a| *a != addr);
                        true
                    }
                    Err(e) => {
                        tracing::error!(backend = %addr, command = %cmd, error = %e, "exec: down command failed; it runs again at the next evaluation");
                        false
                    }
                }
            }
        }
    }

    /// SIGTERM to a backend process's group; SIGKILL after `stop_grace` (see `tick`).
    fn stop_process(&mut self, addr: SocketAddr) {
        self.order.retain(|a| *a != addr);
        let ActuatorConfig::Process { stop_grace, .. } = &self.cfg else {
            return;
        };
        if let Some(child) = self.children.remove(&addr) {
            tracing::info!(backend = %addr, pid = child.pid(), "stopping backend process (SIGTERM to its group)");
            child.signal(libc::SIGTERM);
            self.stopping.push((child, Instant::now() + *stop_grace));
        }
    }

    /// Reaps stopped children (SIGKILL past the grace period) and returns the backends whose
    /// process exited on its own.
    pub fn tick(&mut self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.stopping
            .retain_mut(|(child, deadline)| match child.exited() {
                Some(_) => false,
                None if now >= *deadline => {
                    tracing::warn!(pid = child.pid(), "backend ignored SIGTERM: SIGKILL");
                    child.kill();
                    false
                }
                None => true,
            });
        let mut dead = Vec::new();
        for (a, c) in self.children.iter_mut() {
            if let Some(status) = c.exited() {
                tracing::warn!(backend = %a, %status, "backend process exited on its own");
                dead.push(*a);
            }
        }
        for a in &dead {
            self.order.retain(|x| x != a);
            self.children.remove(a);
        }
        dead
    }

    /// Stops everything this actuator runs (scaler exit).
    pub fn shutdown(&mut self) {
        let addrs: Vec<SocketAddr> = self.children.keys().copied().collect();
        for a in addrs {
            self.stop_process(a);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stopping.is_empty() && Instant::now() < deadline {
            self.tick();
            std::thread::sleep(Duration::from_millis(50));
        }
        for (mut c, _) in self.stopping.drain(..) {
            c.kill();
        }
    }

    /// What this actuator made and still runs, for the state file (`draining` marks those
    /// given).
    pub fn launched(&self, draining: &[SocketAddr]) -> Vec<Launched> {
        self.order
            .iter()
            .map(|a| {
                let pid = self.children.get(a).map(|c| c.pid());
                Launched {
                    addr: *a,
                    pid,
                    start: pid.and_then(start_time),
                    draining: draining.contains(a),
                }
            })
            .collect()
    }

    /// Takes over what a previous scaler launched: processes that still run with the same
    /// start time (a reused pid never matches), and exec backends by address. Returns those
    /// taken.
    pub fn adopt(&mut self, list: &[Launched]) -> Vec<Launched> {
        let mut taken = Vec::new();
        for l in list {
            if self.order.contains(&l.addr) {
                continue;
            }
            match (&self.cfg, l.pid, l.start) {
                (ActuatorConfig::Process { .. }, Some(pid), Some(start)) => {
                    if start_time(pid) != Some(start) {
                        tracing::info!(backend = %l.addr, pid, "not adopted: that process is gone (or its pid was reused)");
                        continue;
                    }
                    self.children.insert(l.addr, Proc::Adopted { pid, start });
                }
                (ActuatorConfig::Exec { .. }, None, _) => {}
                _ => continue,
            }
            tracing::info!(backend = %l.addr, pid = ?l.pid, draining = l.draining, "adopted a backend a previous scaler launched");
            self.order.push(l.addr);
            taken.push(l.clone());
        }
        taken
    }
}

/// Runs an `exec` command (`sh -c`, in a process group of its own, like the backends a
/// `process` actuator starts, so that Ctrl-C on the scaler's terminal reaches the scaler
/// alone and the scaler decides what happens to it). Its stdout if it exits 0; an error
/// with its stderr if not. Past `timeout` its group is sent SIGKILL; when `cancel` turns
/// true (the scaler stops), SIGTERM.
async fn run(
    cmd: &str,
    timeout: Duration,
    cancel: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<String, String> {
    let child = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pid = child.id();
    let cancelled = async {
        match cancel {
            Some(mut rx) => {
                let _ = rx.wait_for(|stopping| *stopping).await;
            }
            None => std::future::pending().await,
        }
    };
    // Dropping the output future drops the child: kill_on_drop sends SIGKILL to `sh` and
    // tokio reaps it; the signal to the group reaches what `sh` started.
    let out = tokio::select! {
        out = child.wait_with_output() => out.map_err(|e| format!("{cmd:?}: {e}"))?,
        _ = tokio::time::sleep(timeout) => {
            signal_group(pid, libc::SIGKILL);
            return Err(format!(
                "{cmd:?} was still running after its timeout ({}): killed",
                crate::config::values::format_duration(timeout)
            ));
        }
        _ = cancelled => {
            signal_group(pid, libc::SIGTERM);
            return Err(format!("{cmd:?} stopped: the scaler is stopping"));
        }
    };
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            crate::config::values::clip(String::from_utf8_lossy(&out.stderr).trim(), 2000)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `sig` to the process group `pid` leads (nothing if the pid is unknown).
fn signal_group(pid: Option<u32>, sig: i32) {
    if let Some(pid) = pid {
        crate::sys::signal_group(pid, sig);
    }
}

/// Reads the scaler's state file (missing: empty).
pub fn load_launched(path: &std::path::Path) -> Result<Vec<Launched>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the scaler's state file atomically (see [`crate::atomic_file`]).
pub fn save_launched(path: &std::path::Path, list: &[Launched]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(list).map_err(|e| e.to_string())?;
    crate::atomic_file::write(path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn exec(up: &str, down: &str, timeout: Duration) -> Actuator {
        Actuator::new(ActuatorConfig::Exec {
            up: up.into(),
            down: down.into(),
            timeout,
        })
        .unwrap()
    }

    /// Whether the process `pid` is gone (or a zombie) within 10 s.
    fn gone(pid: u32) -> bool {
        let t = Instant::now();
        while start_time(pid).is_some() {
            if t.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Waits (bounded) for the pid a command wrote to `file`.
    fn pid_in(file: &std::path::Path) -> u32 {
        let t = Instant::now();
        loop {
            if let Some(p) = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return p;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no pid in {file:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn exec_up_prints_the_address_last_and_down_gets_addr_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("down.log");
        let rt = runtime();
        let mut a = exec(
            "echo launching {count} >&2; echo progress; echo 127.0.0.1:9300; echo",
            &format!("echo {{addr}} {{count}} > {}", log.display()),
            Duration::from_secs(10),
        );
        let addr = rt.block_on(a.launch(3, &[])).unwrap();
        assert_eq!(addr, "127.0.0.1:9300".parse().unwrap());
        assert_eq!(a.owned(), vec![addr]);
        assert!(rt.block_on(a.stop(addr, 2)));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "127.0.0.1:9300 2\n");
        assert!(a.owned().is_empty());
    }

    #[test]
    fn a_failed_down_keeps_the_backend_ours() {
        let rt = runtime();
        let mut a = exec("echo 127.0.0.1:9302", "exit 1", Duration::from_secs(10));
        let addr = rt.block_on(a.launch(1, &[])).unwrap();
        assert!(!rt.block_on(a.stop(addr, 0)));
        assert_eq!(a.owned(), vec![addr], "forgotten while it may still run");
    }

    #[test]
    fn exec_up_that_fails_or_prints_no_address_is_an_error_that_says_why() {
        let rt = runtime();
        let mut a = exec(
            "echo quota exceeded >&2; exit 3",
            "true",
            Duration::from_secs(10),
        );
        let e = rt.block_on(a.launch(1, &[])).unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.contains("quota exceeded"),
            "{e}"
        );
        let mut a = exec("echo done", "true", Duration::from_secs(10));
        let e = rt.block_on(a.launch(1, &[])).unwrap_err();
        assert!(
            e.contains("must print the new backend's IP:PORT last") && e.contains("\"done\""),
            "{e}"
        );
        // A huge line is cut in the message, not copied whole.
        let mut a = exec(
            "head -c 100000 /dev/zero | tr '\\0' x",
            "true",
            Duration::from_secs(10),
        );
        let e = rt.block_on(a.launch(1, &[])).unwrap_err();
        assert!(e.len() < 1000, "{} bytes", e.len());
        assert!(a.owned().is_empty());
    }

    #[test]
    fn exec_up_past_its_timeout_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let rt = runtime();
        // `sh` starts a child that would outlive it: the group is killed, not only `sh`.
        let mut a = exec(
            &format!("sleep 60 & echo $! > {}; wait", pidfile.display()),
            "true",
            Duration::from_secs(1),
        );
        let e = rt.block_on(a.launch(1, &[])).unwrap_err();
        assert!(
            e.contains("still running after its timeout (1s): killed"),
            "{e}"
        );
        assert!(
            gone(pid_in(&pidfile)),
            "the command's child survived its timeout"
        );
    }

    #[test]
    fn a_stopping_scaler_stops_an_up_in_progress_and_a_down_is_not_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let log = dir.path().join("down.log");
        let rt = runtime();
        let mut a = exec(
            &format!("sleep 60 & echo $! > {}; wait", pidfile.display()),
            &format!("sleep 0.3; echo {{addr}} > {}", log.display()),
            Duration::from_secs(120),
        );
        let cancel = a.canceller();
        let pid_path = pidfile.clone();
        let e = rt.block_on(async {
            let launch = a.launch(1, &[]);
            tokio::pin!(launch);
            // Cancelled once the command runs (its pid is written).
            loop {
                tokio::select! {
                    r = &mut launch => break r,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {
                        if std::fs::metadata(&pid_path).is_ok_and(|m| m.len() > 0) {
                            cancel.cancel();
                        }
                    }
                }
            }
        });
        let e = e.unwrap_err();
        assert!(e.contains("the scaler is stopping"), "{e}");
        assert!(
            gone(pid_in(&pidfile)),
            "the up command's child survived the stop"
        );
        // A down still runs to its end after the stop.
        rt.block_on(a.stop("127.0.0.1:9301".parse().unwrap(), 0));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "127.0.0.1:9301\n");
    }

    #[test]
    fn ranges() {
        assert_eq!(port_range("9200-9299").unwrap(), (9200, 9299));
        assert!(port_range("9299-9200").is_err());
        assert!(port_range("9200").is_err());
    }

    #[test]
    fn a_process_backend_lives_dies_and_is_noticed() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = ActuatorConfig::Process {
            command: "sleep 30 # {port}".into(),
            ports: format!("{port}-{port}"),
            host: localhost(),
            stop_grace: Duration::from_millis(200),
        };
        let mut a = Actuator::new(cfg).unwrap();
        let rt = runtime();
        let addr = rt.block_on(a.launch(1, &[])).unwrap();
        assert_eq!(addr.port(), port);
        assert!(
            rt.block_on(a.launch(2, &[])).is_err(),
            "the only port is taken by our own backend"
        );
        assert!(a.tick().is_empty());
        let pid = a.pids()[0];
        // Its own process group, led by it.
        assert_eq!(crate::sys::process_group(pid), Some(pid));
        let listed = a.launched(&[]);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].start, start_time(pid));
        // A second actuator adopts it; a stale entry (another start time) is refused.
        let mut b = Actuator::new(a.cfg.clone()).unwrap();
        let mut stale = listed[0].clone();
        stale.start = stale.start.map(|s| s + 1);
        stale.addr = SocketAddr::new(localhost(), port.wrapping_add(1));
        assert_eq!(b.adopt(&[stale]).len(), 0, "a reused pid is not ours");
        assert_eq!(b.adopt(&listed).len(), 1);
        assert_eq!(b.pids(), vec![pid]);
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        let t = Instant::now();
        while b.tick().is_empty() && t.elapsed() < Duration::from_secs(5) {
            // The adopted copy notices through /proc once the child is reaped below.
            let _ = a.tick();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            b.owned().is_empty(),
            "the adopted process's exit was noticed"
        );
        let t = Instant::now();
        while a.tick().is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(a.owned().is_empty(), "the child's exit was noticed");
        let _ = addr;
    }
}
