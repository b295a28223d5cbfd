//! The admin API's OpenAPI contract: the document ringlb serves is the one committed in
//! docs/openapi.json (regenerate with `RINGLB_WRITE_OPENAPI=1 cargo test --test openapi`),
//! and schemathesis (PyPI), run against a live ringlb with a token, finds no server error
//! and no response that breaks the document, in positive and negative cases.

mod common;
use common::*;
use std::process::Command;

/// A ringlb with a token, three backends and a second pool, for the fuzzer to work on.
fn live_balancer(dir: &std::path::Path) -> (Proxy, std::net::SocketAddr, Vec<TestBackend>) {
    let backends: Vec<TestBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| TestBackend::start(n))
        .collect();
    let token = dir.join("token");
    std::fs::write(&token, "fuzz-token\n").unwrap();
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "state_file = {:?}\n[admin]\nlisten = \"{admin}\"\ntoken_file = {:?}\n{}{}{}",
        dir.join("state.json").display().to_string(),
        token.display().to_string(),
        listener_config("web", port, "web", ""),
        pool_config(
            "web",
            "least_conn",
            &backends.iter().map(|b| (b.addr, 1)).collect::<Vec<_>>(),
            "max_connections = 10\n"
        ),
        pool_config("spare", "round_robin", &[(backends[0].addr, 1)], ""),
    );
    let p = Proxy::start(&cfg, addr(port));
    (p, admin, backends)
}

#[test]
fn the_served_document_is_the_committed_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, admin, _b) = live_balancer(dir.path());
    let (status, served) = http(admin, "GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    let served: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("RINGLB_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &pretty).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == pretty,
        "docs/openapi.json is not what ringlb serves: run RINGLB_WRITE_OPENAPI=1 cargo test --test openapi"
    );
    // Every guarded operation says it needs the token; the probes, the page and the
    // document say they do not.
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open = matches!(
                path.as_str(),
                "/healthz" | "/readyz" | "/" | "/status.js" | "/status.css" | "/openapi.json"
            );
            assert_eq!(op.get("security").is_none(), open, "{method} {path}");
        }
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_spec_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, admin, _b) = live_balancer(dir.path());
    // A fixed seed keeps CI repeatable; RINGLB_SCHEMATHESIS_SEED explores others.
    let seed = std::env::var("RINGLB_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let out = Command::new("schemathesis")
        .args(["run", &format!("http://{admin}/openapi.json")])
        .args(["-H", "Authorization: Bearer fuzz-token"])
        // Every check: server errors, status codes, content types, headers and bodies
        // against the document, negative data rejected, valid data accepted, auth
        // enforced, unsupported methods answered 405.
        .args(["--checks", "all", "--mode", "all"])
        .args(["--max-examples", "100", "--seed", &seed])
        .args([
            "--generation-database",
            "none",
            "--no-color",
            "--workers",
            "1",
        ])
        .args(["--request-timeout", "10"])
        .current_dir(dir.path())
        .output()
        .expect("schemathesis (pip install schemathesis; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "schemathesis found failures (seed {seed}):\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran every operation.
    assert!(text.contains("15 selected / 15 total"), "{text}");
    assert!(text.contains("Tested: 15"), "{text}");
}
