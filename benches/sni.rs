//! SNI routing on a TLS workload: ringlb's CPU per new TLS connection against HAProxy doing
//! `req.ssl_sni` routing, both in the same run, side by side (a duel: both proxies under load
//! at the same moment, on the same CPU, so drifts of the VM hit both alike).
//!
//!     cargo bench --bench sni -- [--ringlb BINARY] [--reps 5] [--secs 5] [--clients 2]
//!
//! Each proxy routes `a.test` to one `openssl s_server` and everything else to another. Per
//! proxy, `--clients` python3 processes open TLS connections with SNI `a.test` as fast as
//! they can (handshake, then close), so every connection costs the proxy an accept, an
//! inspection of the ClientHello, a backend connect and a short relay of the handshake.
//! Proxies on CPU 1 (one worker / one thread each), load and TLS servers on CPU 0. Reported:
//! proxy CPU µs per connection (on-CPU time from /proc schedstat), and ringlb/haproxy per rep.
//! Needs: haproxy, openssl, python3, taskset (Debian packages).

#[path = "../tests/common/tls.rs"]
mod tls;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PROXY_CPU: &str = "1";
const LOAD_CPU: &str = "0";

const CLIENT: &str = r#"
import socket, ssl, sys, time
port, sni, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
n = 0
end = time.time() + secs
while time.time() < end:
    s = socket.create_connection(("127.0.0.1", port))
    t = ctx.wrap_socket(s, server_hostname=sni)
    if t.getpeercert(binary_form=True):
        n += 1
    t.close()
print(n)
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {port}");
}

fn spawn(cpu: &str, prog: &str, args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new("taskset")
        .args(["-c", cpu, prog])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {prog}: {e}"))
}

/// CPU seconds of a process, all its threads, to the nanosecond (the first field of each
/// thread's /proc schedstat: time spent on a CPU), where /proc/PID/stat counts 10 ms ticks.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// The proxy's own pid: `taskset` execs it, so the child's pid is the proxy's.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tls_server(dir: &Path, cn: &str) -> (u16, Child) {
    let (cert, key) = tls::self_signed(dir, cn);
    let port = free_port();
    let c = spawn(
        LOAD_CPU,
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-naccept",
            "100000000",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ],
    );
    wait_port(port);
    (port, c)
}

fn main() {
    let mut ringlb = "target/release/ringlb".to_string();
    let (mut reps, mut secs, mut clients) = (5usize, 5u32, 2usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = |i: usize| args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--ringlb" => ringlb = val(i),
            "--reps" => reps = val(i).parse().unwrap_or(reps),
            "--secs" => secs = val(i).parse().unwrap_or(secs),
            "--clients" => clients = val(i).parse().unwrap_or(clients),
            "--bench" => {
                i += 1;
                continue;
            }
            _ => {}
        }
        i += 2;
    }
    for tool in ["haproxy", "openssl", "python3", "taskset"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            eprintln!("sni bench needs {tool}: apt-get install haproxy openssl python3 util-linux");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (a_port, a) = tls_server(dir.path(), "a.test");
    let (d_port, d) = tls_server(dir.path(), "default.test");
    let mut kids = Running(vec![a, d]);
    let client = dir.path().join("client.py");
    std::fs::write(&client, CLIENT).unwrap();

    let (rl_port, hp_port) = (free_port(), free_port());
    let rl_cfg = dir.path().join("ringlb.toml");
    std::fs::write(
        &rl_cfg,
        format!(
            "workers = 1\npin_workers = false\n[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{rl_port}\"\npool = \"d\"\n\
             routes = [{{ sni = \"a.test\", pool = \"a\" }}, {{ sni = \"*.b.test\", pool = \"d\" }}]\n\
             [pools.a]\nbackends = [{{ addr = \"127.0.0.1:{a_port}\" }}]\n\
             [pools.d]\nbackends = [{{ addr = \"127.0.0.1:{d_port}\" }}]\n"
        ),
    )
    .unwrap();
    let hp_cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &hp_cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 9500\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5m\n  timeout server 5m\n\
             frontend tls\n  bind 127.0.0.1:{hp_port}\n  tcp-request inspect-delay 5s\n\
             \x20 tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
             \x20 use_backend a if {{ req_ssl_sni -i a.test }}\n\
             \x20 use_backend d if {{ req_ssl_sni -i -m end .b.test }}\n  default_backend d\n\
             backend a\n  server s 127.0.0.1:{a_port}\n\
             backend d\n  server s 127.0.0.1:{d_port}\n"
        ),
    )
    .unwrap();
    let rl = {
        use std::os::unix::process::CommandExt;
        Command::new("taskset")
            .args(["-c", PROXY_CPU, &ringlb, "serve", "--config"])
            .arg(&rl_cfg)
            .env("RINGLB_LOG", "warn")
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("ringlb binary (cargo build --release)")
    };
    let hp = spawn(
        PROXY_CPU,
        "haproxy",
        &["-f", hp_cfg.to_str().unwrap(), "-db"],
    );
    let (rl_pid, hp_pid) = (rl.id(), hp.id());
    kids.0.push(rl);
    kids.0.push(hp);
    wait_port(rl_port);
    wait_port(hp_port);

    println!(
        "SNI routing, TLS 1.3 handshakes (python3 ssl, SNI a.test) through each proxy at once"
    );
    println!(
        "ringlb: {ringlb}; {clients} client(s) per proxy, {secs} s per rep, proxies on CPU {PROXY_CPU}"
    );
    println!(
        "| rep | ringlb conn/s | ringlb µs CPU/conn | haproxy conn/s | haproxy µs CPU/conn | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for rep in 0..reps {
        let (rl0, hp0) = (cpu_secs(rl_pid), cpu_secs(hp_pid));
        let load: Vec<(bool, Child)> = (0..clients)
            .flat_map(|_| [(true, rl_port), (false, hp_port)])
            .map(|(is_rl, port)| {
                let c = Command::new("taskset")
                    .args(["-c", LOAD_CPU, "python3"])
                    .arg(&client)
                    .args([&port.to_string(), "a.test", &secs.to_string()])
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                (is_rl, c)
            })
            .collect();
        let (mut rl_n, mut hp_n) = (0u64, 0u64);
        for (is_rl, c) in load {
            let out = c.wait_with_output().unwrap();
            let n: u64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            if is_rl { rl_n += n } else { hp_n += n }
        }
        let (rl_cpu, hp_cpu) = (cpu_secs(rl_pid) - rl0, cpu_secs(hp_pid) - hp0);
        let per = |cpu: f64, n: u64| cpu * 1e6 / n.max(1) as f64;
        let (rl_us, hp_us) = (per(rl_cpu, rl_n), per(hp_cpu, hp_n));
        let ratio = rl_us / hp_us;
        ratios.push(ratio);
        println!(
            "| {rep} | {:.0} | {rl_us:.1} | {:.0} | {hp_us:.1} | {ratio:.2}x |",
            rl_n as f64 / secs as f64,
            hp_n as f64 / secs as f64
        );
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "\nmedian ringlb/haproxy CPU per connection: {:.2}x (min {:.2}, max {:.2})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}
