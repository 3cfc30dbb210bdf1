#!/usr/bin/env python3
"""Memory per idle keep-alive connection: N connections each send one plain chat request
through the router (one worker, logging off, `loadtest mock` upstream), then stay open and idle;
prints the router's VmRSS before and after, and the difference per connection.

Usage: loadtest/idle-conns.py ROUTER_BIN [N=2000]   (needs target/release/loadtest)
"""
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time

CFG = os.path.join(tempfile.mkdtemp(), "router.toml")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
router_bin = sys.argv[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (8000, 20000))
mock = subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "loadtest"), "mock", "--listen", "127.0.0.1:0", "--workers", "1"], stderr=subprocess.PIPE, text=True)
line = mock.stderr.readline()
maddr = re.search(r"http://([0-9.:]+)", line).group(1)
cfg = f"""[server]
host = "127.0.0.1"
port = 0
workers = 1
[logging]
enabled = false
[[providers]]
name = "upstream"
format = "openai"
base_url = "http://{maddr}/v1"
[[routers]]
type = "fallback"
"""
open(CFG, "w").write(cfg)
r = subprocess.Popen([router_bin, CFG], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
addr = None
while addr is None:
    l = r.stderr.readline()
    m = re.search(r"listening on http://([0-9.:]+)", l)
    if m: addr = m.group(1)
host, port = addr.rsplit(":", 1)
port = int(port)
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])
body = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
# warm
s = socket.create_connection((host, port))
s.sendall(req)
s.recv(65536)
s.close()
time.sleep(0.5)
base = rss(r.pid)
socks = []
for i in range(N):
    s = socket.create_connection((host, port))
    s.sendall(req)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    socks.append(s)
time.sleep(1.0)
after = rss(r.pid)
print(f"{router_bin}: {N} idle keep-alive connections (one plain request each): RSS {base/1024:.1f} -> {after/1024:.1f} MB = {(after-base)/N:.1f} KB per connection")
for s in socks:
    s.close()
r.kill()
mock.kill()
