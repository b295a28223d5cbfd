//! `ringlb ctl` end to end: the real binary against a live ringlb with a token. Every
//! subcommand, as a table and as `--json`; where it finds the URL and the token (flags, env,
//! config); exit codes 1 (the API refused, e.g. 404) and 2 (could not ask); completions and
//! man pages.

mod common;
use common::*;
use std::net::SocketAddr;
use std::process::{Command, Output};

struct Live {
    _lb: Proxy,
    _backends: Vec<TestBackend>,
    admin: SocketAddr,
    addrs: Vec<SocketAddr>,
    token_file: std::path::PathBuf,
    config: std::path::PathBuf,
}

fn live() -> Live {
    live_env(&[])
}

/// A live ringlb started with extra environment variables (fault injections).
fn live_env(env: &[(&str, &str)]) -> Live {
    let backends: Vec<TestBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| TestBackend::start(n))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let dir = tempfile::tempdir().unwrap().keep();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "ctl-token\n").unwrap();
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = {:?}\n{}{}",
        token_file.display().to_string(),
        listener_config("web", port, "web", ""),
        pool_config(
            "web",
            "round_robin",
            &addrs.iter().map(|a| (*a, 1)).collect::<Vec<_>>(),
            ""
        ),
    );
    let config = dir.join("ringlb.toml");
    std::fs::write(&config, &cfg).unwrap();
    let lb = Proxy::start_env(&cfg, addr(port), env);
    Live {
        _lb: lb,
        _backends: backends,
        admin,
        addrs,
        token_file,
        config,
    }
}

fn ctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("ctl")
        .args(args)
        .env_remove("RINGLB_ADMIN_URL")
        .env_remove("RINGLB_ADMIN_TOKEN_FILE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs with `--config` and checks it succeeded; returns stdout.
fn ok(l: &Live, args: &[&str]) -> String {
    let mut all = vec!["--config", l.config.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = ctl(&all, &[]);
    assert_eq!(o.status.code(), Some(0), "ctl {args:?}: {}", err(&o));
    out(&o)
}

fn json(l: &Live, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(l, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ctl {args:?}: not JSON ({e}): {text}"))
}

#[test]
fn every_subcommand_as_a_table_and_as_json() {
    let l = live();
    let [a, b, c] = [l.addrs[0], l.addrs[1], l.addrs[2]].map(|x| x.to_string());

    // backends: a header and one row per backend, states included.
    let table = ok(&l, &["backends"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("POOL") && lines[0].contains("STATE"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    for x in [&a, &b, &c] {
        assert!(
            table
                .lines()
                .any(|r| r.contains(x.as_str()) && r.contains(" up ")),
            "{table}"
        );
    }
    let v = json(&l, &["backends"]);
    assert_eq!(v["pools"][0]["backends"].as_array().unwrap().len(), 3);
    assert_eq!(ok(&l, &["backends", "--pool", "web"]).lines().count(), 4);
    let o = ctl(
        &[
            "--config",
            l.config.to_str().unwrap(),
            "backends",
            "--pool",
            "nope",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("no pool \"nope\""), "{}", err(&o));

    // drain, then ready.
    let t = ok(&l, &["drain", "web", &b]);
    assert!(t.contains(&b) && t.contains("draining"), "{t}");
    assert_eq!(backend_state_with(l.admin, &b), "draining");
    let v = json(&l, &["ready", "web", &b]);
    assert_eq!(v["addr"], b.as_str());
    assert_ne!(backend_state_with(l.admin, &b), "draining");

    // weight.
    let t = ok(&l, &["weight", "web", &a, "7"]);
    assert!(
        t.lines().nth(1).unwrap().split_whitespace().nth(3) == Some("7"),
        "{t}"
    );
    assert_eq!(json(&l, &["weight", "web", &a, "3"])["weight"], 3);

    // protect: on for a while, shown, off.
    let t = ok(&l, &["protect", "web", &a, "--for", "10m"]);
    assert!(t.contains("protected for 10m"), "{t}");
    let v = json(&l, &["protect", "web", &a, "--show"]);
    assert_eq!(v["enabled"], true);
    assert!(ok(&l, &["backends"]).contains("up,protected"));
    let t = ok(&l, &["protect", "web", &a, "--off"]);
    assert!(t.contains("not protected"), "{t}");

    // add, then delete with a drain timeout.
    let new = refusing_addr().to_string();
    let v = json(&l, &["add", "web", &new, "--weight", "2"]);
    assert_eq!(
        (v["addr"].as_str(), v["weight"].as_u64()),
        (Some(new.as_str()), Some(2))
    );
    assert_eq!(v["state"], "starting");
    let t = ok(&l, &["delete", "web", &new, "--drain-timeout", "1s"]);
    assert!(t.contains("after 1s"), "{t}");
    wait_until(std::time::Duration::from_secs(10), || {
        !ok(&l, &["backends"]).contains(&new)
    });
    let v = json(&l, &["delete", "web", &c, "--drain-timeout", "30s"]);
    assert_eq!(v["drain_timeout"], "30s");

    // rebalance: the serving backends with their share; an unknown pool is an error.
    let t = ok(&l, &["rebalance", "web"]);
    assert!(
        t.lines().next().unwrap().contains("SHARE") && t.contains("rebalancing web"),
        "{t}"
    );
    let v = json(&l, &["rebalance", "web"]);
    assert_eq!(v["pool"], "web");
    assert!(!v["backends"].as_array().unwrap().is_empty(), "{v}");
    let o = ctl(
        &["--config", l.config.to_str().unwrap(), "rebalance", "nope"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("404"), "{}", err(&o));

    // stats: listeners and backends, with the last check.
    let t = ok(&l, &["stats"]);
    assert!(
        t.contains("LISTENER") && t.contains("web") && t.contains(&a),
        "{t}"
    );
    let v = json(&l, &["stats"]);
    assert_eq!(v["listeners"][0]["name"], "web");
}

fn backend_state_with(admin: SocketAddr, addr: &str) -> String {
    let (_, body) = http(admin, "GET", "/backends", None, Some("ctl-token"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr)
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn where_it_finds_the_api_and_its_exit_codes() {
    let l = live();
    let url = format!("http://{}", l.admin);
    let token = l.token_file.to_str().unwrap();
    let a = l.addrs[0].to_string();

    // Flags.
    let o = ctl(&["--url", &url, "--token-file", token, "backends"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // The environment.
    let o = ctl(
        &["backends"],
        &[
            ("RINGLB_ADMIN_URL", &url),
            ("RINGLB_ADMIN_TOKEN_FILE", token),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains(&a));
    // A flag beats the environment.
    let o = ctl(
        &["--url", &url, "backends"],
        &[
            ("RINGLB_ADMIN_URL", "http://127.0.0.1:1"),
            ("RINGLB_ADMIN_TOKEN_FILE", token),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));

    // The API refuses: 404 for a backend that is not there, exit 1, its error text.
    let o = ctl(
        &[
            "--config",
            l.config.to_str().unwrap(),
            "drain",
            "web",
            "127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("404") && err(&o).contains("no backend"),
        "{}",
        err(&o)
    );
    assert!(out(&o).is_empty());
    let o = ctl(
        &[
            "--config",
            l.config.to_str().unwrap(),
            "--json",
            "weight",
            "nopool",
            &a,
            "2",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    // 400 for a weight out of range.
    let o = ctl(
        &[
            "--config",
            l.config.to_str().unwrap(),
            "weight",
            "web",
            &a,
            "999",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("400") && err(&o).contains("out of range"),
        "{}",
        err(&o)
    );
    // No token, or a wrong one: 401, exit 1, and a hint.
    let o = ctl(&["--url", &url, "backends"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("401") && err(&o).contains("--token-file"),
        "{}",
        err(&o)
    );
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "nope").unwrap();
    let o = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            wrong.path().to_str().unwrap(),
            "backends",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));

    // Could not ask: unreachable, unreadable token file, empty token, broken config: 2.
    let o = ctl(
        &["--url", &format!("http://{}", refusing_addr()), "backends"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("cannot reach"), "{}", err(&o));
    let o = ctl(
        &["--url", &url, "--token-file", "/nonexistent/t", "backends"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let empty = tempfile::NamedTempFile::new().unwrap();
    let o = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            empty.path().to_str().unwrap(),
            "backends",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("empty"), "{}", err(&o));
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "workers = \"many\"\n").unwrap();
    let o = ctl(&["--config", bad.path().to_str().unwrap(), "backends"], &[]);
    assert_eq!(o.status.code(), Some(2));
    // Bad usage is clap's: exit 2 with the usage.
    let o = ctl(&["weight", "web", &a, "heavy"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = ctl(&["protect", "web", &a, "--off", "--for", "1m"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0));
        let text = out(&o);
        assert!(
            text.contains("ctl") && text.contains("drain"),
            "{shell}: {text}"
        );
    }
    // The bash script loads in bash and completes `ringlb ctl d` to drain/delete.
    let o = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &o.stdout).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(ringlb ctl d); COMP_CWORD=2; _ringlb ringlb d ctl; echo \"${{COMPREPLY[@]}}\"",
        script.path().display()
    );
    let o = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let words = out(&o);
    assert!(
        words.contains("drain") && words.contains("delete"),
        "{words} {}",
        err(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let page = std::fs::read_to_string(dir.path().join("ringlb.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    let ctl_page = std::fs::read_to_string(dir.path().join("ringlb-ctl.1")).unwrap();
    assert!(
        ctl_page.contains("token") && ctl_page.contains("RINGLB_ADMIN_URL"),
        "{ctl_page}"
    );
    // Every flag has a help text, --config included.
    let o = Command::new(BIN).args(["ctl", "--help"]).output().unwrap();
    assert!(out(&o).contains("--config <FILE>") && out(&o).contains("ringlb config file"));
}

/// A change answered 503 (as while an upgrade hands the balancer over; the first two here,
/// a fault the debug build injects) is asked again: the drain goes through, exit 0.
#[test]
fn a_change_answered_503_is_asked_again() {
    let l = live_env(&[("RINGLB_FAULT_ADMIN_503", "2")]);
    let url = format!("http://{}", l.admin);
    let token = l.token_file.display().to_string();
    let target = l.addrs[0].to_string();
    let out = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            &token,
            "drain",
            "web",
            &target,
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = http(l.admin, "GET", "/backends", None, Some("ctl-token"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("draining"), "{body}");
}
