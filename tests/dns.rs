//! DNS-discovered backends with the real binary and a DNS server the test controls (a few
//! lines of UDP answering A queries on 127.0.0.1): a name with 2 addresses gives 2 backends,
//! 3 then 1 and the pool follows, the removed ones draining with a held connection intact;
//! a server that stops answering leaves the pool as it was.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers A queries for any name with the addresses in `answer` (None: stays silent);
/// AAAA and other queries get an empty NOERROR answer.
fn dns_server(answer: Arc<Mutex<Option<Vec<Ipv4Addr>>>>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            let Some(ips) = answer.lock().unwrap().clone() else {
                continue;
            };
            if n < 12 {
                continue;
            }
            // The question: labels up to the zero byte, then type and class.
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += 1 + buf[i] as usize;
            }
            if i + 5 > n {
                continue;
            }
            let qtype = u16::from_be_bytes([buf[i + 1], buf[i + 2]]);
            let question = &buf[12..i + 5];
            let ips: Vec<Ipv4Addr> = if qtype == 1 { ips } else { Vec::new() };
            let mut out = Vec::new();
            out.extend_from_slice(&buf[..2]); // id
            out.extend_from_slice(&[0x81, 0x80, 0, 1]);
            out.extend_from_slice(&(ips.len() as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(question);
            for ip in ips {
                out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                out.extend_from_slice(&ip.octets());
            }
            let _ = sock.send_to(&out, from);
        }
    });
    at
}

/// A backend on `ip:port` that greets with its address and echoes.
fn backend_at(ip: Ipv4Addr, port: u16) {
    let l = TcpListener::bind((ip, port)).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.write_all(format!("{ip}\n").as_bytes());
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn addrs(admin: SocketAddr) -> Vec<(String, String)> {
    first_pool_backends(admin)
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_pool_follows_its_dns_name() {
    let port = free_port();
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    for ip in &ips {
        backend_at(*ip, port);
    }
    let answer = Arc::new(Mutex::new(Some(ips[..2].to_vec())));
    let dns = dns_server(answer.clone());
    let (lb, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n{}[pools.p]\nbackends = [{{ name = \"web.test\", port = {port} }}]\nresolvers = [\"{dns}\"]\nresolve_interval = \"200ms\"\n[pools.p.health]\ninterval = \"100ms\"\nrise = 1\n",
        listener_config("l", lb, "p", ""),
    );
    let _p = Proxy::start(&cfg, addr(lb));
    let at = |i: usize| format!("{}:{port}", ips[i]);
    let up = |want: &[usize]| {
        let mut want: Vec<(String, String)> =
            want.iter().map(|&i| (at(i), "up".to_string())).collect();
        want.sort();
        move |got: Vec<(String, String)>| {
            let mut got = got;
            got.sort();
            got == want
        }
    };
    // Two addresses: two backends, both up after their checks, both taking connections.
    let two = up(&[0, 1]);
    wait_until(Duration::from_secs(10), || two(addrs(admin)));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        seen.insert(greet(addr(lb)).1);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Hold a connection on .2, then three addresses.
    let mut held = loop {
        let (s, name) = greet(addr(lb));
        if name == ips[1].to_string() {
            break s;
        }
    };
    *answer.lock().unwrap() = Some(ips.clone());
    let three = up(&[0, 1, 2]);
    wait_until(Duration::from_secs(10), || three(addrs(admin)));
    // One address: .2 drains (its connection carries on) and .3 leaves.
    *answer.lock().unwrap() = Some(ips[..1].to_vec());
    wait_until(Duration::from_secs(10), || {
        let got = addrs(admin);
        got.contains(&(at(0), "up".into()))
            && got.contains(&(at(1), "draining".into()))
            && !got.iter().any(|(a, _)| *a == at(2))
    });
    for _ in 0..4 {
        assert_eq!(greet(addr(lb)).1, ips[0].to_string());
    }
    held.write_all(b"still\n").unwrap();
    let mut line = String::new();
    BufReader::new(held.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "still\n");
    drop(held);
    let one = up(&[0]);
    wait_until(Duration::from_secs(10), || one(addrs(admin)));
    // The server stops answering: the pool keeps what it had.
    *answer.lock().unwrap() = None;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(one(addrs(admin)), "{:?}", addrs(admin));
    assert_eq!(greet(addr(lb)).1, ips[0].to_string());
}

#[test]
fn bad_named_backends_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (entry, key) in [
        ("{ name = \"bad name\", port = 80 }", "backends.name"),
        ("{ name = \"web.test\" }", "backends"),
        ("{ name = \"web.test\", port = 0 }", "backends.port"),
        (
            "{ addr = \"127.0.0.1:80\", name = \"web.test\", port = 80 }",
            "backends",
        ),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "{}[pools.p]\nbackends = [{entry}]\n",
                listener_config("l", free_port(), "p", "")
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{entry}: {err}");
        assert!(err.contains(key), "{entry}: {err}");
    }
}
