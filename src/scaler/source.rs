//! Where the scaler's numbers come from: the balancer's /metrics (the default), a Prometheus
//! server's /api/v1/query, the backends' own CPU (from /proc), and the admin API's view of
//! the pool. Also the small HTTP client they share.
//!
//! Owns: turning a scrape or a query into one value, or an error that says why there is
//! none. A missing, failed, empty or NaN reading is an error, never a zero.
//! Must not touch: decisions (policy.rs) or processes (actuator.rs).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Scrape the balancer's /metrics.
    Lb {
        metrics_url: String,
        #[serde(default)]
        metric: LbMetric,
        /// For `connection_rate`: per second or per minute.
        #[serde(default)]
        rate_unit: RateUnit,
    },
    /// Any PromQL expression returning one number.
    Prometheus { url: String, query: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbMetric {
    /// Active connections per in-service backend.
    #[default]
    ActiveConnections,
    /// New connections per second (or minute) per in-service backend.
    ConnectionRate,
    /// Mean CPU % of the backend processes the process actuator runs.
    Cpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateUnit {
    #[default]
    Second,
    Minute,
}

/// A minimal HTTP/1.1 client (Connection: close) for `http://host:port/path` URLs.
pub async fn http(
    url: &str,
    method: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let work = async {
        let mut s = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}User-Agent: ringlb-scaler\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let text = String::from_utf8_lossy(&resp).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{url}: not an HTTP response"))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (enough of it for ringlb's own metrics).
pub fn parse_text(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = HashMap::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                map.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
            }
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A reading source with the memory rates need (the previous counter sample).
pub struct Source {
    cfg: SourceConfig,
    last_total: Option<(f64, Instant)>,
    last_cpu: HashMap<u32, (f64, Instant)>,
}

impl Source {
    pub fn new(cfg: SourceConfig) -> Source {
        Source {
            cfg,
            last_total: None,
            last_cpu: HashMap::new(),
        }
    }

    pub fn describe(&self) -> String {
        match &self.cfg {
            SourceConfig::Lb { metric, .. } => format!("{metric:?} from the balancer's /metrics"),
            SourceConfig::Prometheus { query, .. } => format!("PromQL {query:?}"),
        }
    }

    /// One reading for `pool`, whose in-service backends number `in_service`. `pids` are the
    /// backend processes (for CPU).
    pub async fn read(&mut self, pool: &str, in_service: u32, pids: &[u32]) -> Result<f64, String> {
        let value = match self.cfg.clone() {
            SourceConfig::Prometheus { url, query } => {
                let full = format!(
                    "{}/api/v1/query?query={}",
                    url.trim_end_matches('/'),
                    encode(&query)
                );
                let (status, body) = http(&full, "GET", None, None, Duration::from_secs(5)).await?;
                if status != 200 {
                    return Err(format!("Prometheus answered {status}: {body}"));
                }
                let v: serde_json::Value = serde_json::from_str(&body)
                    .map_err(|e| format!("Prometheus: bad JSON: {e}"))?;
                let result = &v["data"]["result"];
                let first = result
                    .as_array()
                    .and_then(|r| r.first())
                    .ok_or("Prometheus: the query returned no series")?;
                let raw = first["value"][1]
                    .as_str()
                    .or_else(|| result.get(1).and_then(|x| x.as_str()))
                    .ok_or("Prometheus: no value in the result")?;
                raw.parse::<f64>()
                    .map_err(|_| format!("Prometheus: {raw:?} is not a number"))?
            }
            SourceConfig::Lb {
                metrics_url,
                metric,
                rate_unit,
            } => match metric {
                LbMetric::Cpu => self.cpu(pids)?,
                _ => {
                    let (status, body) =
                        http(&metrics_url, "GET", None, None, Duration::from_secs(5)).await?;
                    if status != 200 {
                        return Err(format!("{metrics_url} answered {status}"));
                    }
                    let samples = parse_text(&body);
                    let of_pool = |name: &'static str| {
                        samples.iter().filter(move |s| {
                            s.name == name && s.labels.get("pool").map(|p| p.as_str()) == Some(pool)
                        })
                    };
                    if of_pool("ringlb_backend_up").next().is_none() {
                        return Err(format!(
                            "{metrics_url} has no ringlb_backend_up for pool {pool:?}"
                        ));
                    }
                    if in_service == 0 {
                        return Err(format!("pool {pool:?} has no backend in service"));
                    }
                    match metric {
                        LbMetric::ActiveConnections => {
                            // Connections on every backend of the pool (draining ones too: the
                            // load is real) spread over those in service.
                            of_pool("ringlb_backend_active_connections")
                                .map(|s| s.value)
                                .sum::<f64>()
                                / in_service as f64
                        }
                        _ => {
                            let total: f64 = of_pool("ringlb_backend_connections_total")
                                .map(|s| s.value)
                                .sum();
                            let now = Instant::now();
                            let prev = self.last_total.replace((total, now));
                            let (before, at) =
                                prev.ok_or("a rate needs two scrapes: waiting for the next one")?;
                            let secs = now.duration_since(at).as_secs_f64();
                            // A counter that went down was reset (restart): count from zero.
                            let delta = if total >= before {
                                total - before
                            } else {
                                total
                            };
                            let per = if rate_unit == RateUnit::Minute {
                                60.0
                            } else {
                                1.0
                            };
                            delta / secs.max(1e-3) * per / in_service as f64
                        }
                    }
                }
            },
        };
        if !value.is_finite() {
            return Err(format!("the reading is {value}, not a number"));
        }
        Ok(value)
    }

    /// Mean CPU % of the backend processes since the previous reading.
    fn cpu(&mut self, pids: &[u32]) -> Result<f64, String> {
        if pids.is_empty() {
            return Err("no backend process to measure".into());
        }
        let now = Instant::now();
        let mut shares = Vec::new();
        let mut fresh = HashMap::new();
        for &pid in pids {
            let Some(secs) = process_cpu_secs(pid) else {
                continue;
            };
            if let Some(&(before, at)) = self.last_cpu.get(&pid) {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    shares.push((secs - before).max(0.0) / wall * 100.0);
                }
            }
            fresh.insert(pid, (secs, now));
        }
        self.last_cpu = fresh;
        if shares.is_empty() {
            return Err("CPU needs two samples of a backend: waiting for the next one".into());
        }
        Ok(shares.iter().sum::<f64>() / shares.len() as f64)
    }
}

/// user + system CPU seconds of a process.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

/// A backend as the admin API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct BackendView {
    pub addr: String,
    pub state: String,
    pub active_connections: i64,
}

/// The pool's backends from the admin API.
pub async fn pool_backends(
    admin_url: &str,
    token: Option<&str>,
    pool: &str,
) -> Result<Vec<BackendView>, String> {
    let (status, body) = http(
        &format!("{}/backends", admin_url.trim_end_matches('/')),
        "GET",
        None,
        token,
        Duration::from_secs(5),
    )
    .await?;
    if status != 200 {
        return Err(format!("admin API answered {status}: {body}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("admin API: bad JSON: {e}"))?;
    let pools = v["pools"].as_array().ok_or("admin API: no pools")?;
    let p = pools
        .iter()
        .find(|p| p["name"] == pool)
        .ok_or_else(|| format!("the balancer has no pool {pool:?}"))?;
    serde_json::from_value(p["backends"].clone()).map_err(|e| format!("admin API: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ringlb_text() {
        let t = "# HELP x y\n# TYPE ringlb_backend_up gauge\nringlb_backend_up{pool=\"p\",backend=\"127.0.0.1:1\"} 1\nringlb_backend_active_connections{pool=\"p\",backend=\"127.0.0.1:1\"} 7\nplain 3.5\n";
        let s = parse_text(t);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels["backend"], "127.0.0.1:1");
        assert_eq!(s[1].value, 7.0);
        assert_eq!(s[2].name, "plain");
        assert_eq!(encode("sum(rate(x[1m]))"), "sum%28rate%28x%5B1m%5D%29%29");
        assert_eq!(dechunk("5\r\nhello\r\n0\r\n\r\n"), "hello");
    }
}
