#!/usr/bin/env python3
"""Memory per held stream with a large prompt: N streaming chat requests with a KB-kilobyte
prompt through the router (one worker, logging off), each held open after its first event
(`loadtest mock --events 60 --interval-ms 1000` upstream); prints the router's VmRSS before and
after and the difference per stream.

Usage: loadtest/big-streams.py ROUTER_BIN N KB   e.g. 200 100   (needs target/release/loadtest)
"""
import os, re, resource, socket, subprocess, sys, tempfile, time, json
router_bin = sys.argv[1]; N = int(sys.argv[2]); KB = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (8000, 20000))
lt = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "loadtest")
mock = subprocess.Popen([lt, "mock", "--listen", "127.0.0.1:0", "--workers", "1", "--events", "60", "--interval-ms", "1000"], stderr=subprocess.PIPE, text=True)
maddr = re.search(r"http://([0-9.:]+)", mock.stderr.readline()).group(1)
cfg = os.path.join(tempfile.mkdtemp(), "r.toml")
open(cfg, "w").write(f'[server]\nhost = "127.0.0.1"\nport = 0\nworkers = 1\n[logging]\nenabled = false\n[[providers]]\nname = "u"\nformat = "openai"\nbase_url = "http://{maddr}/v1"\n[[routers]]\ntype = "fallback"\n')
r = subprocess.Popen([router_bin, cfg], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
addr = None
while addr is None:
    m = re.search(r"listening on http://([0-9.:]+)", r.stderr.readline())
    if m: addr = m.group(1)
host, port = addr.rsplit(":", 1); port = int(port)
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
prompt = ("word " * (KB * 1024 // 5))
body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": prompt}]}).encode()
req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
time.sleep(0.3)
base = rss(r.pid)
socks = []
for i in range(N):
    s = socket.create_connection((host, port)); s.sendall(req)
    data = b""
    while b"data:" not in data:
        data += s.recv(65536)
    socks.append(s)
time.sleep(1.0)
after = rss(r.pid)
print(f"{router_bin}: {N} held streams with {KB} KB prompts: RSS {base/1024:.1f} -> {after/1024:.1f} MB = {(after-base)/N:.1f} KB per stream")
for s in socks: s.close()
r.kill(); mock.kill()
