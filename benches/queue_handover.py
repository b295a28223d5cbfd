#!/usr/bin/env python3
"""Queue handover across workers: how long a client queued for a backend at its
max_connections waits after the slot frees, with 2 workers (SO_REUSEPORT spreads the
clients, so about half the handovers cross workers).

    cargo build --release && python3 benches/queue_handover.py target/release/ringlb 18777

Loopback only; 200 handovers; prints p50/p90/max in ms.
"""
import socket, time, sys, statistics, subprocess, os, threading
# backend: greets "b\n" and holds until the client closes
def backend(ls):
    while True:
        c,_=ls.accept()
        def h(c):
            try:
                c.sendall(b"b\n")
                while c.recv(4096): pass
            except Exception: pass
            c.close()
        threading.Thread(target=h,args=(c,),daemon=True).start()
ls=socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); ls.bind(("127.0.0.1",0)); ls.listen(128)
bport=ls.getsockname()[1]
threading.Thread(target=backend,args=(ls,),daemon=True).start()
pport=int(sys.argv[2])
cfg=f'workers = 2\n[[listeners]]\nname = "l"\nbind = "127.0.0.1:{pport}"\npool = "p"\n[pools.p]\nbackends = [{{ addr = "127.0.0.1:{bport}", max_connections = 1 }}]\nqueue_timeout = "30s"\n[pools.p.health]\ninterval = "1d"\n'
import tempfile
cfgpath=os.path.join(tempfile.mkdtemp(),"c.toml")
open(cfgpath,"w").write(cfg)
p=subprocess.Popen([sys.argv[1],"serve","--config",cfgpath],env=dict(os.environ,RINGLB_LOG="warn"))
time.sleep(1)
def greet(s):
    s.settimeout(10); return s.recv(2)
lat=[]
held=socket.create_connection(("127.0.0.1",pport)); greet(held)
for i in range(200):
    w=socket.create_connection(("127.0.0.1",pport))
    time.sleep(0.005)  # queued
    t=time.time(); held.close(); greet(w); lat.append((time.time()-t)*1000)
    held=w
p.kill(); p.wait()
lat.sort()
print(f"{sys.argv[1]}: handover ms p50 {lat[len(lat)//2]:.2f} p90 {lat[int(len(lat)*.9)]:.2f} max {lat[-1]:.2f}")
