//! Actuators: how the scaler makes and unmakes backends.
//!
//! - `process`: launches local backends from a command template with `{port}` (ports from a
//!   range), stops them with SIGTERM and, after a grace period, SIGKILL; reaps them, and
//!   reports those that died on their own so they can be replaced.
//! - `exec`: user commands, e.g. a cloud CLI or `kubectl scale`. `up` runs with `{count}`
//!   (the desired count) and prints the new backend's `IP:PORT` as its last line; `down` runs
//!   with `{addr}` and `{count}` once that backend has drained.
//!
//! Owns: child processes and commands. Must not touch: the balancer (mod.rs registers and
//! deregisters through the admin API).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
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
            serialize_with = "crate::config::duration_serde::serialize",
            deserialize_with = "crate::config::duration_serde::within::<0, { crate::config::US_H }, _>"
        )]
        stop_grace: Duration,
    },
    Exec {
        up: String,
        down: String,
    },
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

pub struct Actuator {
    cfg: ActuatorConfig,
    children: BTreeMap<SocketAddr, Child>,
    /// Children being stopped: SIGKILL at the deadline.
    stopping: Vec<(Child, Instant)>,
    /// Where the next port search starts: ports are used in turn, so a backend that just
    /// died is not replaced on its own port while the balancer may still list it.
    next_port: u16,
    /// Every backend made and not yet stopped, in launch order.
    order: Vec<SocketAddr>,
}

impl Actuator {
    pub fn new(cfg: ActuatorConfig) -> Result<Actuator, String> {
        if let ActuatorConfig::Process { ports, command, .. } = &cfg {
            port_range(ports)?;
            if !command.contains("{port}") {
                return Err("actuator.command must contain {port}".into());
            }
        }
        Ok(Actuator {
            cfg,
            children: BTreeMap::new(),
            stopping: Vec::new(),
            next_port: 0,
            order: Vec::new(),
        })
    }

    /// Backends this actuator made and has not stopped, oldest first.
    pub fn owned(&self) -> Vec<SocketAddr> {
        self.order.clone()
    }

    /// Pids of the running backend processes.
    pub fn pids(&self) -> Vec<u32> {
        self.children.values().map(|c| c.id()).collect()
    }

    /// Makes one backend; returns its address. `count` is the desired total (for `exec`).
    pub fn launch(&mut self, count: u32, skip: &[SocketAddr]) -> Result<SocketAddr, String> {
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
                let child = Command::new("sh")
                    .args(["-c", &format!("exec {cmd}")])
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
                tracing::info!(backend = %addr, pid = child.id(), command = %cmd, "launched backend process");
                self.children.insert(addr, child);
                self.order.push(addr);
                Ok(addr)
            }
            ActuatorConfig::Exec { up, .. } => {
                let cmd = up.replace("{count}", &count.to_string());
                let out = Command::new("sh")
                    .args(["-c", &cmd])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "{cmd:?} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let last = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                let addr: SocketAddr = last.parse().map_err(|_| {
                    format!(
                        "{cmd:?} must print the new backend's IP:PORT last; it printed {last:?}"
                    )
                })?;
                tracing::info!(backend = %addr, command = %cmd, "exec: backend up");
                self.order.push(addr);
                Ok(addr)
            }
        }
    }

    /// Whether the process of a backend accepts connections yet (exec: assumed).
    pub fn ready(&self, addr: SocketAddr) -> bool {
        !self.children.contains_key(&addr)
            || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    }

    /// Stops a drained backend: SIGTERM now, SIGKILL after the grace period (see `tick`).
    pub fn stop(&mut self, addr: SocketAddr, count: u32) {
        self.order.retain(|a| *a != addr);
        match &self.cfg {
            ActuatorConfig::Process { stop_grace, .. } => {
                if let Some(child) = self.children.remove(&addr) {
                    tracing::info!(backend = %addr, pid = child.id(), "stopping backend process (SIGTERM)");
                    let _ = Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status();
                    self.stopping.push((child, Instant::now() + *stop_grace));
                }
            }
            ActuatorConfig::Exec { down, .. } => {
                let cmd = down
                    .replace("{addr}", &addr.to_string())
                    .replace("{count}", &count.to_string());
                match Command::new("sh")
                    .args(["-c", &cmd])
                    .stdin(Stdio::null())
                    .status()
                {
                    Ok(s) if s.success() => {
                        tracing::info!(backend = %addr, command = %cmd, "exec: backend down")
                    }
                    Ok(s) => {
                        tracing::error!(backend = %addr, command = %cmd, status = %s, "exec: down command failed")
                    }
                    Err(e) => {
                        tracing::error!(backend = %addr, command = %cmd, error = %e, "exec: cannot run down command")
                    }
                }
            }
        }
    }

    /// Reaps stopped children (SIGKILL past the grace period) and returns the backends whose
    /// process exited on its own.
    pub fn tick(&mut self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.stopping
            .retain_mut(|(child, deadline)| match child.try_wait() {
                Ok(Some(_)) => false,
                _ if now >= *deadline => {
                    tracing::warn!(pid = child.id(), "backend ignored SIGTERM: SIGKILL");
                    let _ = child.kill();
                    let _ = child.wait();
                    false
                }
                _ => true,
            });
        let dead: Vec<SocketAddr> = self
            .children
            .iter_mut()
            .filter_map(|(a, c)| matches!(c.try_wait(), Ok(Some(_))).then_some(*a))
            .collect();
        for a in &dead {
            self.order.retain(|x| x != a);
            if let Some(mut c) = self.children.remove(a) {
                let status = c.wait().map(|s| s.to_string()).unwrap_or_default();
                tracing::warn!(backend = %a, %status, "backend process exited on its own");
            }
        }
        dead
    }

    /// Stops everything this actuator runs (scaler exit).
    pub fn shutdown(&mut self) {
        let addrs: Vec<SocketAddr> = self.children.keys().copied().collect();
        for a in addrs {
            self.stop(a, 0);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stopping.is_empty() && Instant::now() < deadline {
            self.tick();
            std::thread::sleep(Duration::from_millis(50));
        }
        for (mut c, _) in self.stopping.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let addr = a.launch(1, &[]).unwrap();
        assert_eq!(addr.port(), port);
        assert!(
            a.launch(2, &[]).is_err(),
            "the only port is taken by our own backend"
        );
        assert!(a.tick().is_empty());
        let pid = a.pids()[0];
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        let t = Instant::now();
        let mut dead = Vec::new();
        while dead.is_empty() && t.elapsed() < Duration::from_secs(5) {
            dead = a.tick();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(dead, vec![addr]);
        assert!(a.owned().is_empty());
    }
}
