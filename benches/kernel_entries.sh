#!/usr/bin/env bash
# Kernel work of a ringlb build, counted rather than timed (perf stat of the proxy process,
# one worker on CPU 0, the load on CPU 1):
#   - per keep-alive request and per new connection (wrk, 32 connections, a 4 s slice of a
#     5 s run): syscalls, context switches, io_uring requests submitted and completions
#     posted, and file lookups (`io_uring_file_get`: a request on a plain descriptor takes
#     a reference on the file, one on a fixed file does not);
#   - per MiB relayed (iperf3, one stream, the same slice): the same counts.
#   benches/kernel_entries.sh BUILD_BINARY [EXTRA_ENV...]
# e.g. benches/kernel_entries.sh target/release/ringlb RINGLB_IO_URING_OFF=fixed_files
# Needs: nginx, wrk, iperf3, perf (linux-perf). Loopback only; bounded (about 30 s).
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
taskset -c 1 iperf3 -s -p 18582 > /dev/null 2>&1 &
cat > "$dir/ringlb.toml" <<RL
workers = 1
[[listeners]]
name = "http"
bind = "127.0.0.1:18581"
pool = "http"
[[listeners]]
name = "bulk"
bind = "127.0.0.1:18583"
pool = "bulk"
[pools.http]
backends = [{ addr = "127.0.0.1:18580" }]
[pools.bulk]
backends = [{ addr = "127.0.0.1:18582" }]
RL
env "$@" RINGLB_LOG=error taskset -c 0 "$bin" serve --config "$dir/ringlb.toml" &
pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18581) 2>/dev/null && break; sleep 0.1; done
events=raw_syscalls:sys_enter,context-switches,io_uring:io_uring_submit_req,io_uring:io_uring_complete,io_uring:io_uring_file_get
count() { awk -F, -v e="$1" '$3 == e {print $1}' "$dir/perf.out"; }
report() { # unit, how many units in the slice
  awk -v u="$1" -v n="$2" -v s="$(count raw_syscalls:sys_enter)" -v c="$(count context-switches)" \
      -v q="$(count io_uring:io_uring_submit_req)" -v x="$(count io_uring:io_uring_complete)" \
      -v f="$(count io_uring:io_uring_file_get)" \
      'BEGIN { printf "per %s: %.2f syscalls, %.3f context switches, %.2f requests, %.2f completions, %.2f file lookups\n", u, s / n, c / n, q / n, x / n, f / n }'
}
for mode in keepalive close; do
  hdr=(); [ $mode = close ] && hdr=(-H "Connection: close")
  taskset -c 1 wrk -t1 -c32 -d5s "${hdr[@]}" http://127.0.0.1:18581/ > "$dir/wrk.out" &
  w=$!
  sleep 0.5
  perf stat -x, -e $events -p $pid -- sleep 4 2> "$dir/perf.out" >/dev/null
  wait $w
  reqs=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.out")
  printf '%s, %.0f req/s, ' $mode "$reqs"
  report "$([ $mode = close ] && echo connection || echo request)" "$(awk -v r="$reqs" 'BEGIN { print r * 4 }')"
done
taskset -c 1 iperf3 -c 127.0.0.1 -p 18583 -t 5 -J > "$dir/iperf.json" &
w=$!
sleep 0.5
perf stat -x, -e $events -p $pid -- sleep 4 2> "$dir/perf.out" >/dev/null
wait $w
bps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"])' "$dir/iperf.json")
printf 'bulk, %.2f Gbit/s, ' "$(awk -v b="$bps" 'BEGIN { print b / 1e9 }')"
report MiB "$(awk -v b="$bps" 'BEGIN { print b / 8 * 4 / 1048576 }')"
