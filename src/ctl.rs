//! `ringlb ctl`: a small CLI over the admin API, in the spirit of HAProxy's runtime API over
//! socat: list backends, drain, ready, weigh, add, delete and protect them.
//!
//! Owns: finding the API (flags, then `RINGLB_ADMIN_URL` / `RINGLB_ADMIN_TOKEN_FILE`, then
//! the `[admin]` section of a config file), one request per command, and printing the answer
//! as a table for people or as the API's JSON (`--json`) for scripts.
//! Exit codes: 0 done; 1 the API refused (a 4xx/5xx, its error text on stderr); 2 ringlb
//! could not be asked (no URL, unreadable token or config, unreachable).
//! Must not touch: anything but HTTP to the admin API.

use crate::control::views::{BackendView, BackendsView, ProtectionView, RemovalView, Stats};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Talk to a running ringlb's admin API.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The admin API's base URL (default: $RINGLB_ADMIN_URL, else `[admin] listen` of
    /// --config, else http://127.0.0.1:9101).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// A file holding the bearer token (default: $RINGLB_ADMIN_TOKEN_FILE, else
    /// `[admin] token_file` of --config).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A ringlb config file to take the admin address and token file from.
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for an answer.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: CtlCommand,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// List every pool's backends, their state, weight and connections.
    Backends {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Drain a backend: no new connections; open ones go on until they end.
    Drain {
        /// The pool.
        pool: String,
        /// The backend, ip:port.
        addr: String,
    },
    /// Put a drained (or starting) backend back in service.
    Ready {
        /// The pool.
        pool: String,
        /// The backend, ip:port.
        addr: String,
    },
    /// Set a backend's weight (1 to 256).
    Weight {
        /// The pool.
        pool: String,
        /// The backend, ip:port.
        addr: String,
        /// The new weight.
        weight: u32,
    },
    /// Add a backend; it starts as `starting` until its health checks pass.
    Add {
        /// The pool.
        pool: String,
        /// The backend, ip:port.
        addr: String,
        /// Its weight (default 1).
        #[arg(long)]
        weight: Option<u32>,
        /// A backup server (takes connections only while no other backend of the pool is up).
        #[arg(long)]
        backup: bool,
    },
    /// Delete a backend: it drains, then leaves (connections left at the timeout are closed).
    Delete {
        /// The pool.
        pool: String,
        /// The backend, ip:port.
        addr: String,
        /// How long its connections get (default 5m).
        #[arg(long, value_name = "DURATION")]
        drain_timeout: Option<String>,
    },
    /// Rebalance a pool now: backends over their share get idle connections closed, at the
    /// pool's pace, until each is at its share (clients that reconnect land on the others).
    Rebalance {
        /// The pool.
        pool: String,
    },
    /// Show, set or clear a backend's scale-in protection (the scaler never removes it).
    Protect {
        /// The pool.
        pool: String,
        /// The backend, ip:port.
        addr: String,
        /// For how long (default 2h, at most 48h).
        #[arg(long = "for", value_name = "DURATION", conflicts_with_all = ["off", "show"])]
        duration: Option<String>,
        /// Clear the protection.
        #[arg(long, conflicts_with = "show")]
        off: bool,
        /// Only show it.
        #[arg(long)]
        show: bool,
    },
    /// The counters the status page draws: listeners, pools and backends.
    Stats,
}

/// Where the API is and what to send it.
struct Target {
    url: String,
    token: Option<String>,
}

fn target(a: &CtlArgs) -> Result<Target, String> {
    let config = match &a.config {
        Some(path) => Some(crate::config::Config::load(path).map_err(|e| format!("{e}"))?),
        None => None,
    };
    let admin = config.as_ref().and_then(|c| c.admin.as_ref());
    let url = match (&a.url, std::env::var("RINGLB_ADMIN_URL").ok(), admin) {
        (Some(u), _, _) => u.clone(),
        (None, Some(u), _) if !u.is_empty() => u,
        (None, _, Some(admin)) => {
            // A wildcard listen address is reached on loopback from here.
            let mut at = admin.listen;
            if at.ip().is_unspecified() {
                at.set_ip(if at.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{at}")
        }
        _ => "http://127.0.0.1:9101".into(),
    };
    let token_file = a
        .token_file
        .clone()
        .or_else(|| {
            std::env::var_os("RINGLB_ADMIN_TOKEN_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| admin.and_then(|a| a.token_file.clone()));
    let token = match token_file {
        Some(f) => Some(crate::config::read_token(&f).map_err(|e| format!("token file {e}"))?),
        None => None,
    };
    Ok(Target {
        url: url.trim_end_matches('/').to_string(),
        token,
    })
}

/// A path segment, percent-encoded (an IPv6 backend is `[::1]:80`).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `ringlb ctl`; returns the exit code.
pub fn main(a: CtlArgs) -> i32 {
    let t = match target(&a) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ringlb ctl: {e}");
            return 2;
        }
    };
    let backend = |pool: &str, addr: &str| format!("/pools/{}/backends/{}", seg(pool), seg(addr));
    let (method, path, body): (&str, String, Option<String>) = match &a.command {
        CtlCommand::Backends { .. } => ("GET", "/backends".into(), None),
        CtlCommand::Stats => ("GET", "/stats".into(), None),
        CtlCommand::Drain { pool, addr } => ("POST", backend(pool, addr) + "/drain", None),
        CtlCommand::Rebalance { pool } => ("POST", format!("/pools/{}/rebalance", seg(pool)), None),
        CtlCommand::Ready { pool, addr } => ("POST", backend(pool, addr) + "/ready", None),
        CtlCommand::Weight { pool, addr, weight } => (
            "PUT",
            backend(pool, addr) + "/weight",
            Some(serde_json::json!({ "weight": weight }).to_string()),
        ),
        CtlCommand::Add {
            pool,
            addr,
            weight,
            backup,
        } => {
            let mut b = serde_json::json!({ "addr": addr });
            if let Some(w) = weight {
                b["weight"] = (*w).into();
            }
            if *backup {
                b["backup"] = true.into();
            }
            (
                "POST",
                format!("/pools/{}/backends", seg(pool)),
                Some(b.to_string()),
            )
        }
        CtlCommand::Delete {
            pool,
            addr,
            drain_timeout,
        } => (
            "DELETE",
            backend(pool, addr)
                + &drain_timeout
                    .as_ref()
                    .map(|d| format!("?drain_timeout={}", seg(d)))
                    .unwrap_or_default(),
            None,
        ),
        CtlCommand::Protect {
            pool,
            addr,
            duration,
            off,
            show,
        } => {
            let path = backend(pool, addr) + "/protection";
            if *show {
                ("GET", path, None)
            } else {
                let mut b = serde_json::json!({ "enabled": !off });
                if let Some(d) = duration {
                    b["expires_in"] = d.clone().into();
                }
                ("PUT", path, Some(b.to_string()))
            }
        }
    };
    let url = format!("{}{path}", t.url);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringlb ctl: {e}");
            return 2;
        }
    };
    let answer = rt.block_on(crate::http_client::admin_http(
        &url,
        method,
        body.as_deref(),
        t.token.as_deref(),
        a.timeout,
    ));
    let (status, text) = match answer {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringlb ctl: cannot reach the admin API: {e}");
            return 2;
        }
    };
    if status >= 400 {
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text.trim().to_string());
        eprintln!("ringlb ctl: {method} {path}: {status}: {why}");
        if status == 401 {
            eprintln!(
                "ringlb ctl: give the token with --token-file, $RINGLB_ADMIN_TOKEN_FILE or --config"
            );
        }
        return 1;
    }
    // A pool to filter on that is not there is an error, as the API's 404 for it would be.
    if let CtlCommand::Backends { pool: Some(want) } = &a.command
        && serde_json::from_str::<BackendsView>(&text)
            .is_ok_and(|v| !v.pools.iter().any(|p| &p.name == want))
    {
        eprintln!("ringlb ctl: no pool {want:?}");
        return 1;
    }
    if a.json {
        println!("{}", text.trim_end());
        return 0;
    }
    match render(&a.command, &text) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("ringlb ctl: the answer does not read as expected ({e}): {text}");
            2
        }
    }
}

/// The answer as text for people.
fn render(cmd: &CtlCommand, text: &str) -> Result<String, serde_json::Error> {
    Ok(match cmd {
        CtlCommand::Backends { pool } => {
            let v: BackendsView = serde_json::from_str(text)?;
            let rows = v
                .pools
                .iter()
                .filter(|p| pool.as_ref().is_none_or(|want| &p.name == want))
                .flat_map(|p| p.backends.iter())
                .map(backend_row)
                .collect();
            table(&BACKEND_HEADER, rows)
        }
        CtlCommand::Stats => {
            let s: Stats = serde_json::from_str(text)?;
            let mut out = format!(
                "ringlb {} · up {:.0}s · {} workers{}\n\n",
                s.version,
                s.uptime_seconds,
                s.workers,
                if s.stopping { " · stopping" } else { "" }
            );
            out += &table(
                &[
                    "LISTENER", "BIND", "POOL", "ACTIVE", "TOTAL", "REJECTED", "DENIED",
                ],
                s.listeners
                    .iter()
                    .map(|l| {
                        vec![
                            l.name.clone(),
                            l.bind.clone(),
                            l.pool.clone().unwrap_or_else(|| "(routes)".into()),
                            l.active_connections.to_string(),
                            l.connections_total.to_string(),
                            l.rejected_total.to_string(),
                            l.denied_total.to_string(),
                        ]
                    })
                    .collect(),
            );
            out.push('\n');
            out += &table(
                &[
                    "POOL",
                    "BACKEND",
                    "STATE",
                    "ACTIVE",
                    "TOTAL",
                    "ERRORS",
                    "BYTES IN",
                    "BYTES OUT",
                    "CHECK",
                ],
                s.pools
                    .iter()
                    .flat_map(|p| p.backends.iter())
                    .map(|b| {
                        vec![
                            b.backend.pool.clone(),
                            b.backend.addr.clone(),
                            state_text(&b.backend),
                            b.backend.active_connections.to_string(),
                            b.backend.connections_total.to_string(),
                            b.connect_errors_total.to_string(),
                            b.bytes_to_backend_total.to_string(),
                            b.bytes_to_client_total.to_string(),
                            b.last_check
                                .as_ref()
                                .map(|c| {
                                    format!(
                                        "{} {:.1}ms",
                                        if c.ok { "ok" } else { "fail" },
                                        c.latency_ms
                                    )
                                })
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect(),
            );
            out
        }
        CtlCommand::Delete { .. } => {
            let r: RemovalView = serde_json::from_str(text)?;
            let how = match (&r.drain_timeout, r.already_removing) {
                (Some(t), _) => format!("draining, removed once idle or after {t}"),
                _ => "already being removed".into(),
            };
            format!(
                "{} {}: {how} ({} connections open)\n",
                r.backend.pool, r.backend.addr, r.backend.active_connections
            )
        }
        CtlCommand::Rebalance { .. } => {
            let r: crate::control::views::RebalanceView = serde_json::from_str(text)?;
            let rows = r
                .backends
                .iter()
                .map(|b| {
                    vec![
                        r.pool.clone(),
                        b.addr.clone(),
                        b.active_connections.to_string(),
                        format!("{:.2}", b.share),
                        if b.over { "closing idle" } else { "-" }.to_string(),
                    ]
                })
                .collect();
            format!(
                "{}rebalancing {} for at most {}s\n",
                table(&["POOL", "BACKEND", "ACTIVE", "SHARE", "ACTION"], rows),
                r.pool,
                r.ends_within_seconds
            )
        }
        CtlCommand::Protect { .. } => {
            let p: ProtectionView = serde_json::from_str(text)?;
            match (p.enabled, &p.expires_in) {
                (true, Some(left)) => format!("{} {}: protected for {left}\n", p.pool, p.addr),
                (true, None) => format!("{} {}: protected\n", p.pool, p.addr),
                (false, _) => format!("{} {}: not protected\n", p.pool, p.addr),
            }
        }
        _ => {
            let b: BackendView = serde_json::from_str(text)?;
            table(&BACKEND_HEADER, vec![backend_row(&b)])
        }
    })
}

const BACKEND_HEADER: [&str; 7] = [
    "POOL", "BACKEND", "STATE", "WEIGHT", "ACTIVE", "TOTAL", "MAXCONN",
];

fn state_text(b: &BackendView) -> String {
    let s = serde_json::to_value(b.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let s = if b.protected { s + ",protected" } else { s };
    if b.backup { s + ",backup" } else { s }
}

fn backend_row(b: &BackendView) -> Vec<String> {
    let weight = if b.effective_weight < b.weight as f64 {
        format!("{}/{}", b.effective_weight, b.weight)
    } else {
        b.weight.to_string()
    };
    vec![
        b.pool.clone(),
        b.addr.clone(),
        state_text(b),
        weight,
        b.active_connections.to_string(),
        b.connections_total.to_string(),
        if b.max_connections == 0 {
            "-".into()
        } else {
            b.max_connections.to_string()
        },
    ]
}

/// Columns padded to their widest cell, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l += c;
            } else {
                l += &format!("{c:<w$}  ");
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in &rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_are_encoded_and_tables_align() {
        assert_eq!(super::seg("[::1]:80"), "%5B%3A%3A1%5D%3A80");
        assert_eq!(super::seg("web-1.a"), "web-1.a");
        let t = super::table(&["A", "LONG"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\n");
    }
}
