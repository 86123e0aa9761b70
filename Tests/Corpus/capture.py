#!/usr/bin/env python3
"""Records the UDP payloads of a real natchat session on loopback into Tests/Corpus.

Starts natchat-server and three clients (two extended, one classic) on 127.0.0.x, sniffs
loopback with an AF_PACKET socket (root) while they register, chat, probe and leave, and
writes each distinct datagram as a file. The fuzzer (bin/fuzz) starts from this corpus.
Usage: sudo python3 Tests/Corpus/capture.py [BIN_DIR]
"""
import hashlib, os, socket, struct, subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", ".build", "debug")
PORTS = {19280, 19282, 10081}

def sniff(stop, seen):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind(("lo", 0))
    s.settimeout(0.2)
    while not stop.is_set():
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        sport, dport = struct.unpack("!HH", frame[udp:udp + 4])
        if sport in PORTS or dport in PORTS:
            seen.add(frame[udp + 8:])

def main():
    stop, seen = threading.Event(), set()
    t = threading.Thread(target=sniff, args=(stop, seen), daemon=True)
    t.start()
    srv = subprocess.Popen([f"{BIN}/natchat-server", "--bind", "127.0.0.1", "--port", "19280", "--alt-port", "19282"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    def client(name, addr, extra, script):
        p = subprocess.Popen([f"{BIN}/natchat", "--id", name, "--server", "127.0.0.1", "--server-port", "19280",
                              "--bind", addr, "--identity", "none", "--keepalive-interval", "1"] + extra,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        return p, script
    procs = [client("alice", "127.0.0.2", [], ["@chat bob hello bob", "@chat carol hi carol", "@show_list"]),
             client("bob", "127.0.0.3", [], ["@chat alice hi alice ✓ 한국어"]),
             client("carol", "127.0.0.4", ["--classic"], ["@chat alice hello from classic"])]
    time.sleep(1.5)
    for p, script in procs:
        for line in script:
            p.stdin.write(line + "\n"); p.stdin.flush()
    time.sleep(2.5)
    for p, _ in procs:
        p.stdin.write("@exit\n"); p.stdin.flush(); p.stdin.close()
    for p, _ in procs:
        p.wait(timeout=5)
    srv.terminate(); srv.wait(timeout=5)
    stop.set(); t.join()
    for payload in seen:
        name = hashlib.sha256(payload).hexdigest()[:16] + ".bin"
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(payload)
    print(f"captured {len(seen)} distinct datagrams into {HERE}")

if __name__ == "__main__":
    main()
