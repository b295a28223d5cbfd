//! `ringlb demo`: a newcomer's first run. Three small HTTP backends on loopback, each
//! answering with its own name, behind a balancer on 127.0.0.1:8000.
//!
//! Owns: the built-in backends (plain threads: they are scenery, not the product).
//! Must not touch: anything the real `serve` path does not also do; the demo builds a config
//! text and runs it through the same parser and server.

use crate::config::Config;
use crate::server::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Starts one HTTP backend that answers every request with `name`; returns its address.
pub fn start_backend(name: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || serve_http(stream, &name));
            }
        })?;
    Ok(addr)
}

/// Answers HTTP/1.1 requests (keep-alive) with the backend's name.
fn serve_http(mut s: TcpStream, name: &str) {
    let _ = s.set_nodelay(true);
    let body = format!("hello from {name}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 8192];
    let mut have = 0;
    loop {
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        // Answer each complete request head in the buffer.
        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return;
        }
    }
}

/// The demo's config, as a user would write it.
pub fn config_text(
    listen: SocketAddr,
    metrics: SocketAddr,
    admin: SocketAddr,
    backends: &[SocketAddr],
) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("  {{ addr = \"{a}\" }},"))
        .collect();
    format!(
        r#"workers = 0
shutdown_timeout = "2s"

[metrics]
listen = "{metrics}"

[admin]
listen = "{admin}"

[[listeners]]
name = "demo"
bind = "{listen}"
pool = "demo"
connect_timeout = "1s"
retries = 2

[pools.demo]
algorithm = "round_robin"
backends = [
{}
]

[pools.demo.health]
kind = "http"
path = "/health"
interval = "1s"
"#,
        list.join("\n")
    )
}

pub fn run(listen: SocketAddr, metrics: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    let names = ["backend-1", "backend-2", "backend-3"];
    let mut addrs = Vec::new();
    for n in names {
        addrs.push(start_backend(n).map_err(|e| format!("cannot start a demo backend: {e}"))?);
    }
    let text = config_text(listen, metrics, admin, &addrs);
    let config = Config::parse("demo.toml", &text).map_err(|e| e.to_string())?;
    let server = Server::start(config, None)?;
    println!("ringlb demo: a balancer on {listen} in front of 3 backends");
    for (n, a) in names.iter().zip(&addrs) {
        println!("  {n} on {a}");
    }
    println!();
    println!("Try:");
    println!(
        "  for i in 1 2 3 4 5 6; do curl -s http://{listen}/; done   # round robin over the three"
    );
    println!(
        "  wrk -c64 -d5s http://{listen}/                            # load through the balancer"
    );
    println!();
    println!("The config in use (see `ringlb check --config FILE` for your own):");
    for line in text.lines() {
        println!("  | {line}");
    }
    println!();
    println!("Ctrl-C stops it.");
    server.run_until_stopped()
}
