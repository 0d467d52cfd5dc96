"""A fault-injecting TCP proxy for the cluster fault tests: fault_proxy.py LISTEN UPSTREAM MODE_FILE.

Forwards every connection accepted on LISTEN (host:port) to UPSTREAM (host:port), both ways,
in chunks of up to 64 KiB. Before each chunk it reads MODE_FILE:
  pass       forward at once
  delay:MS   wait MS milliseconds, then forward
  stall      hold the data and forward nothing (the sockets stay open) until the mode changes
  reset      end both connections with a TCP reset (SO_LINGER 0)
"""
import socket
import struct
import sys
import threading
import time


def mode(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "pass"


def reset(*socks):
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        except OSError:
            pass


def pump(src, dst, path, other_done):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            while True:
                m = mode(path)
                if m == "stall":
                    time.sleep(0.05)
                    continue
                if m == "reset":
                    reset(src, dst)
                    return
                if m.startswith("delay:"):
                    time.sleep(int(m[6:]) / 1000)
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    other_done.set()


def serve(client, upstream_addr, path):
    try:
        upstream = socket.create_connection(upstream_addr, timeout=10)
        upstream.settimeout(None)
    except OSError:
        client.close()
        return
    done = threading.Event()
    threading.Thread(target=pump, args=(client, upstream, path, done), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client, path, done), daemon=True).start()


def main():
    listen, upstream, path = sys.argv[1:4]
    lh, lp = listen.rsplit(":", 1)
    uh, up = upstream.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((lh, int(lp)))
    srv.listen(64)
    print(f"fault proxy {listen} -> {upstream}", flush=True)
    while True:
        client, _ = srv.accept()
        serve(client, (uh, int(up)), path)


if __name__ == "__main__":
    main()
