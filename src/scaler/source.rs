//! Where the scaler's numbers come from: the balancer's /metrics (the default), a Prometheus
//! server's /api/v1/query, the backends' own CPU and memory (from /proc), and the admin
//! API's view of the pool, all read with [`crate::http_client`].
//!
//! Owns: turning a scrape or a query into one value, or an error that says why there is
//! none. A missing, failed, empty or NaN reading is an error, never a zero.
//! Must not touch: decisions (policy.rs) or processes (actuator.rs).

use crate::http_client::{encode, http};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Scrape the balancer's /metrics.
    Lb {
        /// One balancer's /metrics...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metrics_url: Option<String>,
        /// ...or several (instances behind ECMP or DNS): readings are summed across them,
        /// and one that cannot be read is a missing reading.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        metrics_urls: Vec<String>,
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
    /// Mean memory share (resident set over the machine's memory, in %) of the backend
    /// processes the process actuator runs.
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateUnit {
    #[default]
    Second,
    Minute,
}

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format: `name{label="value",...} value
/// [timestamp]`, with `\\`, `\"` and `\n` escapes in label values. Comments, blank lines
/// and lines it cannot read are skipped (a reading that needs them then reports it missing);
/// it never panics, whatever the text (fuzzed in the tests below).
pub fn parse_text(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = HashMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(r)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().ok()?,
    };
    // An optional timestamp (integer milliseconds), then nothing.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Labels after the opening `{`, up to and including the closing `}`; returns what follows.
fn parse_labels(mut s: &str) -> Option<(HashMap<String, String>, &str)> {
    let mut map = HashMap::new();
    loop {
        s = s.trim_start();
        if let Some(r) = s.strip_prefix('}') {
            return Some((map, r));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        map.insert(key.to_string(), value);
        s = s[end + 1..].trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        }
    }
}

/// The one number a PromQL instant query answered (`/api/v1/query`): the first series of a
/// vector, or a scalar. No series, a missing value, or NaN/infinity is an error, never 0.
pub fn parse_promql(body: &str) -> Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("Prometheus: bad JSON: {e}"))?;
    if let Some(status) = v["status"].as_str()
        && status != "success"
    {
        return Err(format!(
            "Prometheus: status {status:?}: {}",
            v["error"].as_str().unwrap_or("")
        ));
    }
    let result = &v["data"]["result"];
    let raw = match v["data"]["resultType"].as_str() {
        Some("scalar") => result.get(1).and_then(|x| x.as_str()),
        _ => {
            let first = result
                .as_array()
                .and_then(|r| r.first())
                .ok_or("Prometheus: the query returned no series")?;
            first["value"][1].as_str()
        }
    }
    .ok_or("Prometheus: no value in the result")?;
    let value = raw.parse::<f64>().map_err(|_| {
        format!(
            "Prometheus: {:?} is not a number",
            crate::config::values::clip(raw, 40)
        )
    })?;
    if !value.is_finite() {
        return Err(format!(
            "Prometheus: the query answered {raw}, not a reading"
        ));
    }
    Ok(value)
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
                parse_promql(&body)?
            }
            SourceConfig::Lb {
                metrics_url,
                metrics_urls,
                metric,
                rate_unit,
            } => match metric {
                LbMetric::Cpu => self.cpu(pids)?,
                LbMetric::Memory => memory_share(pids)?,
                _ => {
                    // Every instance's samples together: the sums below add them up.
                    let mut samples = Vec::new();
                    for url in metrics_url.iter().chain(metrics_urls.iter()) {
                        let (status, body) =
                            http(url, "GET", None, None, Duration::from_secs(5)).await?;
                        if status != 200 {
                            return Err(format!("{url} answered {status}"));
                        }
                        let mine = parse_text(&body);
                        if !mine.iter().any(|s| {
                            s.name == "ringlb_backend_up"
                                && s.labels.get("pool").map(|p| p.as_str()) == Some(pool)
                        }) {
                            return Err(format!(
                                "{url} has no ringlb_backend_up for pool {pool:?}"
                            ));
                        }
                        samples.extend(mine);
                    }
                    let of_pool = |name: &'static str| {
                        samples.iter().filter(move |s| {
                            s.name == name && s.labels.get("pool").map(|p| p.as_str()) == Some(pool)
                        })
                    };
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

/// Mean resident memory of `pids` as a share of the machine's memory, in %.
pub fn memory_share(pids: &[u32]) -> Result<f64, String> {
    if pids.is_empty() {
        return Err("no backend process to measure".into());
    }
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    let total_kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("/proc/meminfo has no MemTotal")?;
    let page = crate::sys::page_size() as f64;
    let shares: Vec<f64> = pids
        .iter()
        .filter_map(|pid| {
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            let resident: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            Some(resident * page / 1024.0 / total_kb * 100.0)
        })
        .collect();
    if shares.is_empty() {
        return Err("none of the backend processes could be read".into());
    }
    Ok(shares.iter().sum::<f64>() / shares.len() as f64)
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
    /// Scale-in protection the backend (or an operator) asked for: never chosen for
    /// scale-in while it lasts.
    #[serde(default)]
    pub protected: bool,
    /// On how many balancer instances it is listed (set by [`merge_views`]).
    #[serde(skip)]
    pub listed_on: usize,
}

/// The pool as every balancer instance lists it, merged: a backend is `up` only where every
/// instance has it up, `draining` where any drains it, `starting` where any has it starting
/// or does not list it yet; its connections are summed, and it is protected where any
/// instance says so. Any instance that cannot be read fails the whole view.
pub async fn pool_backends_all(
    admin_urls: &[String],
    token: Option<&str>,
    pool: &str,
) -> Result<Vec<BackendView>, String> {
    let mut views = Vec::with_capacity(admin_urls.len());
    for url in admin_urls {
        views.push(
            pool_backends(url, token, pool)
                .await
                .map_err(|e| format!("{url}: {e}"))?,
        );
    }
    Ok(merge_views(&views))
}

/// See [`pool_backends_all`].
pub fn merge_views(views: &[Vec<BackendView>]) -> Vec<BackendView> {
    let mut addrs: Vec<String> = Vec::new();
    for v in views {
        for b in v {
            if !addrs.contains(&b.addr) {
                addrs.push(b.addr.clone());
            }
        }
    }
    addrs
        .into_iter()
        .map(|addr| {
            let seen: Vec<&BackendView> = views
                .iter()
                .filter_map(|v| v.iter().find(|b| b.addr == addr))
                .collect();
            let everywhere = seen.len() == views.len();
            let state = if seen.iter().any(|b| b.state == "draining") {
                "draining"
            } else if everywhere && seen.iter().all(|b| b.state == "up") {
                "up"
            } else if seen.iter().any(|b| b.state == "starting") || !everywhere {
                "starting"
            } else {
                "down"
            };
            BackendView {
                addr,
                state: state.to_string(),
                active_connections: seen.iter().map(|b| b.active_connections).sum(),
                protected: seen.iter().any(|b| b.protected),
                listed_on: seen.len(),
            }
        })
        .collect()
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
    }

    #[test]
    fn views_of_several_balancers_merge() {
        let v = |addr: &str, state: &str, active: i64| BackendView {
            addr: addr.into(),
            state: state.into(),
            active_connections: active,
            protected: false,
            listed_on: 0,
        };
        let a = vec![
            v("1", "up", 2),
            v("2", "up", 1),
            v("3", "draining", 4),
            v("4", "up", 0),
        ];
        let b = vec![v("1", "up", 3), v("2", "down", 0), v("3", "up", 0)];
        let m = merge_views(&[a, b]);
        let st: Vec<(&str, &str, i64)> = m
            .iter()
            .map(|b| (b.addr.as_str(), b.state.as_str(), b.active_connections))
            .collect();
        assert_eq!(
            st,
            vec![
                ("1", "up", 5),
                ("2", "down", 1),
                ("3", "draining", 4),
                ("4", "starting", 0)
            ],
            "up only where every instance has it up; not yet everywhere is starting"
        );
    }

    #[test]
    fn memory_share_of_this_process_is_a_small_positive_percentage() {
        let v = memory_share(&[std::process::id()]).unwrap();
        assert!(v > 0.0 && v < 50.0, "{v}");
        assert!(memory_share(&[]).is_err());
    }

    #[test]
    fn promql_answers() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"42.5"]}]}}"#;
        assert_eq!(parse_promql(vector), Ok(42.5));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"7"]}}"#;
        assert_eq!(parse_promql(scalar), Ok(7.0));
        for bad in [
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"NaN"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"+Inf"]}]}}"#,
            r#"{"status":"error","error":"bad query"}"#,
            "",
            "null",
        ] {
            assert!(parse_promql(bad).is_err(), "{bad}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn escape(v: &str) -> String {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn parse_text_never_panics(text in "\\PC{0,300}") {
                let _ = parse_text(&text);
            }

            #[test]
            fn parse_text_never_panics_on_its_alphabet(text in "[a-z_{}=\",\\\\ \n0-9.eE+-]{0,200}") {
                let _ = parse_text(&text);
            }

            /// The exposition format written by a generator reads back as what it wrote.
            #[test]
            fn exposition_round_trips(
                samples in prop::collection::vec((
                    "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
                    prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", "\\PC{0,20}", 0..4),
                    any::<f64>().prop_filter("finite", |v| v.is_finite()),
                    prop::option::of(any::<i64>()),
                ), 0..10)
            ) {
                let mut text = String::from("# HELP x y\n");
                for (name, labels, value, ts) in &samples {
                    text.push_str(name);
                    if !labels.is_empty() {
                        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                        text.push_str(&format!("{{{}}}", l.join(",")));
                    }
                    text.push_str(&format!(" {value:?}"));
                    if let Some(ts) = ts {
                        text.push_str(&format!(" {ts}"));
                    }
                    text.push('\n');
                }
                let got = parse_text(&text);
                prop_assert_eq!(got.len(), samples.len(), "{}", text);
                for (g, (name, labels, value, _)) in got.iter().zip(&samples) {
                    prop_assert_eq!(&g.name, name);
                    prop_assert_eq!(g.value, *value);
                    let want: HashMap<String, String> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    prop_assert_eq!(&g.labels, &want);
                }
            }

            #[test]
            fn parse_promql_never_panics(body in "\\PC{0,200}") {
                let _ = parse_promql(&body);
            }

            /// Arbitrary JSON in the shapes Prometheus answers with: a value or an error,
            /// and never a non-finite value.
            #[test]
            fn parse_promql_is_total_on_json(
                kind in prop::sample::select(vec!["vector", "scalar", "matrix", "string", ""]),
                raw in prop::sample::select(vec!["1", "-0.5", "NaN", "+Inf", "-Inf", "", "x", "1e308", "1e400"]),
                shape in 0usize..4,
            ) {
                let result = match shape {
                    0 => format!(r#"[{{"metric":{{}},"value":[1,"{raw}"]}}]"#),
                    1 => format!(r#"[1,"{raw}"]"#),
                    2 => "[]".to_string(),
                    _ => format!(r#"{{"value":"{raw}"}}"#),
                };
                let body = format!(r#"{{"status":"success","data":{{"resultType":"{kind}","result":{result}}}}}"#);
                if let Ok(v) = parse_promql(&body) {
                    prop_assert!(v.is_finite());
                }
            }

        }
    }
}
