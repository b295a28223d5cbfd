#!/usr/bin/env bash
# Kernel entries of a ringlb build per request and per connection: syscalls and context
# switches of the proxy process (perf stat), over a 5 s wrk run, one worker on CPU 0.
#   benches/kernel_entries.sh BUILD_BINARY [EXTRA_ENV...]
set -euo pipefail
bin=$1; shift
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/nginx.conf" <<NG
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err warn;
events { worker_connections 4000; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:18580 backlog=4096; location / { return 200 "hello\n"; } } }
NG
taskset -c 1 nginx -c "$dir/nginx.conf" -p "$dir" &
cat > "$dir/ringlb.toml" <<RL
workers = 1
[[listeners]]
name = "http"
bind = "127.0.0.1:18581"
pool = "http"
[pools.http]
backends = [{ addr = "127.0.0.1:18580" }]
RL
env "$@" RINGLB_LOG=error taskset -c 0 "$bin" serve --config "$dir/ringlb.toml" &
pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18581) 2>/dev/null && break; sleep 0.1; done
for mode in keepalive close; do
  hdr=(); [ $mode = close ] && hdr=(-H "Connection: close")
  taskset -c 1 wrk -t1 -c32 -d5s "${hdr[@]}" http://127.0.0.1:18581/ > "$dir/wrk.out" &
  w=$!
  sleep 0.5
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p $pid -- sleep 4 2> "$dir/perf.out" >/dev/null
  wait $w
  reqs=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.out")
  sys=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$dir/perf.out")
  cs=$(awk -F, '/context-switches/ {print $1}' "$dir/perf.out")
  awk -v m=$mode -v r="$reqs" -v s="$sys" -v c="$cs" 'BEGIN { n = r * 4; printf "%s: %.0f req/s, %.2f syscalls and %.3f context switches per %s\n", m, r, s / n, c / n, (m == "close" ? "connection" : "request") }'
done
