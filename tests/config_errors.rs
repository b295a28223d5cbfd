//! Bad config files: `ringlb check` and `ringlb serve` exit 1 with a message that names the
//! key and the line, and `serve` binds nothing.

mod common;
use common::*;
use std::process::Command;

const GOOD: &str = r#"workers = 1

[[listeners]]
name = "web"
bind = "127.0.0.1:8000"
pool = "web"
connect_timeout = "2s"

[pools.web]
algorithm = "least_conn"
backends = [
  { addr = "127.0.0.1:9001" },
  { addr = "127.0.0.1:9002", weight = 2 },
]
"#;

fn run(cmd: &str, text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args([cmd, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn expect_error(text: &str, key: &str, line: usize) {
    let (code, _out, err) = run("check", text);
    assert_eq!(code, 1, "check should fail: {err}");
    assert!(err.contains(key), "the error should name {key:?}: {err}");
    assert!(
        err.contains(&format!("bad.toml:{line}:")),
        "the error should give line {line}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_good_config_prints_the_effective_config() {
    let (code, out, err) = run("check", GOOD);
    assert_eq!(code, 0, "{err}");
    // Defaults are filled in.
    assert!(out.contains("idle_timeout = \"5m\""), "{out}");
    assert!(out.contains("retries = 2"), "{out}");
    assert!(out.contains("algorithm = \"least_conn\""), "{out}");
}

#[test]
fn unknown_key() {
    expect_error(
        &GOOD.replace("connect_timeout", "conect_timeout"),
        "conect_timeout",
        7,
    );
}

#[test]
fn bad_duration() {
    expect_error(
        &GOOD.replace("\"2s\"", "\"2 seconds\""),
        "connect_timeout",
        7,
    );
}

#[test]
fn worker_settings_out_of_range() {
    let at_line_2 = |line: &str| GOOD.replace("workers = 1\n", &format!("workers = 1\n{line}\n"));
    expect_error(&at_line_2("buffer_count = 3"), "buffer_count", 2);
    expect_error(&at_line_2("buffer_size = 512"), "buffer_size", 2);
    expect_error(&at_line_2("busy_poll = \"5ms\""), "busy_poll", 2);
    expect_error(&at_line_2("busy_poll = \"fast\""), "busy_poll", 2);
    let (code, out, err) = run("check", &at_line_2("busy_poll = \"50us\""));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("busy_poll = \"50us\""), "{out}");
}

#[test]
fn unknown_pool() {
    expect_error(
        &GOOD.replace("pool = \"web\"", "pool = \"api\""),
        "listeners.pool",
        6,
    );
}

#[test]
fn no_backends() {
    let text = GOOD.replace(
        "  { addr = \"127.0.0.1:9001\" },\n  { addr = \"127.0.0.1:9002\", weight = 2 },\n",
        "",
    );
    expect_error(&text, "backends", 11);
}

#[test]
fn bad_address() {
    expect_error(
        &GOOD.replace("127.0.0.1:9001", "127.0.0.1:99999"),
        "addr",
        12,
    );
    expect_error(&GOOD.replace("127.0.0.1:8000", "localhost"), "bind", 5);
}

#[test]
fn bad_algorithm() {
    expect_error(&GOOD.replace("least_conn", "fastest"), "algorithm", 10);
}

#[test]
fn bad_values() {
    expect_error(&GOOD.replace("weight = 2", "weight = 0"), "weight", 13);
    expect_error(
        &GOOD.replace(
            "algorithm = \"least_conn\"",
            "algorithm = \"maglev\"\nmaglev_table_size = 65536",
        ),
        "maglev_table_size",
        11,
    );
    expect_error(
        &GOOD.replace("workers = 1", "workers = \"two\""),
        "workers",
        1,
    );
    // Congestion control names are checked against the kernel, on both sides.
    let no_such = GOOD.replace(
        "connect_timeout = \"2s\"",
        "connect_timeout = \"2s\"\ntcp_congestion = \"no-such-cc\"",
    );
    expect_error(&no_such, "listeners.tcp_congestion", 8);
    let (_, _, err) = run("check", &no_such);
    assert!(err.contains("not available in this kernel"), "{err}");
    expect_error(
        &GOOD.replace(
            "algorithm = \"least_conn\"",
            "algorithm = \"least_conn\"\ntcp_congestion = \"\"",
        ),
        "pools.web.tcp_congestion",
        11,
    );
}

#[test]
fn serve_with_a_bad_config_exits_1_and_binds_nothing() {
    let port = free_port();
    let text = GOOD
        .replace("8000", &port.to_string())
        .replace("least_conn", "fastest");
    let (code, _out, err) = run("serve", &text);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("algorithm"), "{err}");
    assert!(
        std::net::TcpStream::connect(addr(port)).is_err(),
        "something listens on {port}"
    );
}

#[test]
fn serve_on_a_taken_port_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, _out, err) = run("serve", &GOOD.replace("8000", &port.to_string()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bind") && err.contains("web"), "{err}");
}

#[test]
fn the_shipped_reference_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ringlb.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
