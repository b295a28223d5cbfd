#!/usr/bin/env python3
"""A/B of ringlb builds on the rr or conn workload, interleaved with direct and HAProxy.

    python3 benches/ab.py REPS SECS NAME=BINARY [NAME=BINARY ...]
    MODE=conn python3 benches/ab.py 9 3 before=/tmp/ringlb-old after=target/release/ringlb

Same layout as benches/e2e.rs (proxies on CPU 0, wrk and an nginx backend on CPU 1, one
worker each); prints medians of req/s (vs direct), wrk's p99 (vs HAProxy) and the proxy's
CPU per request (vs HAProxy, all threads, from /proc). A BINARY may be a wrapper script
that sets environment variables and execs ringlb (its pid must be ringlb's). Kills any
running nginx, haproxy and ringlb first. Needs haproxy, nginx, wrk, taskset.
"""
import os, re, signal, socket, statistics, subprocess, sys, tempfile, time

reps, secs = int(sys.argv[1]), int(sys.argv[2])
variants = sys.argv[3:]
mode = os.environ.get("MODE", "rr")
subprocess.run("pkill -9 nginx; pkill -9 haproxy; pkill -9 -f 'ringlb.* serve'", shell=True)
time.sleep(0.3)
tmp = tempfile.mkdtemp(prefix="ringlb-ab-")
procs = []


def spawn(cpu, args, **kw):
    p = subprocess.Popen(["taskset", "-c", cpu] + args, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, **kw)
    procs.append(p)
    return p


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def write(name, text):
    path = os.path.join(tmp, name)
    open(path, "w").write(text)
    return path


nginx = write("nginx.conf", f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 8000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  server {{ listen 127.0.0.1:18080 backlog=4096; location / {{ return 200 "hello from nginx\\n"; }} }}
}}
""")
haproxy = write("haproxy.cfg", """global
  nbthread 1
  maxconn 9500
defaults
  mode tcp
  timeout connect 2s
  timeout client 5m
  timeout server 5m
listen http
  bind 127.0.0.1:18011
  server s 127.0.0.1:18080
""")
try:
    spawn("1", ["nginx", "-c", nginx, "-p", tmp])
    wait_port(18080)
    targets = [("direct", 18080, None)]
    for i, v in enumerate(variants):
        name, _, binary = v.partition("=")
        port = 18101 + i
        cfg = write(f"{name}.toml", f'workers = 1\nshutdown_timeout = "1s"\n[[listeners]]\n'
                    f'name = "http"\nbind = "127.0.0.1:{port}"\npool = "http"\n[pools.http]\n'
                    f'backends = [{{ addr = "127.0.0.1:18080" }}]\n')
        p = spawn("0", [os.path.abspath(binary), "serve", "--config", cfg],
                  env=dict(os.environ, RINGLB_LOG="warn"))
        wait_port(port)
        targets.append((name, port, p.pid))
    p = spawn("0", ["haproxy", "-f", haproxy, "-db"])
    wait_port(18011)
    targets.append(("haproxy", 18011, p.pid))

    def cpu(pid):
        total = 0
        for t in os.listdir(f"/proc/{pid}/task"):
            f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        return total / os.sysconf("SC_CLK_TCK")

    def ms(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    res = {t[0]: [] for t in targets}
    for r in range(reps):
        for name, port, pid in targets:
            c0 = cpu(pid) if pid else 0
            args = ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{secs}s", "--latency"]
            if mode == "conn":
                args += ["-H", "Connection: close"]
            out = subprocess.run(args + [f"http://127.0.0.1:{port}/"], capture_output=True,
                                 text=True).stdout
            c1 = cpu(pid) if pid else 0
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
            res[name].append((rps, p99, (c1 - c0) * 1e6 / (rps * secs)))
finally:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass

med = statistics.median
h, d = res["haproxy"], res["direct"]
print(f"{mode}: medians of {reps} interleaved runs of {secs} s")
for name, rs in res.items():
    rps, p99, c = (med([x[i] for x in rs]) for i in range(3))
    hc = med([x[2] for x in h])
    print(f"{name:10s} {rps:8.0f}/s ({rps / med([x[0] for x in d]):.3f} direct)  "
          f"p99 {p99:6.3f} ms ({p99 / med([x[1] for x in h]):.2f}x)  "
          f"cpu {c:6.2f} us ({c / hc if hc else 0:.3f}x)")
