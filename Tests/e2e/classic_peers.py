#!/usr/bin/env python3
"""Reference "classic" peers: the seed document's server.py and client.py, fixed up to run.

The seed (shared/seed/000_46b43e60648a7140.txt) is a Python UDP server and client for
NAT traversal chat; its code is partly garbled.  This module reproduces it as faithfully
as possible (same wire messages, same screen output, same same-NAT rule, same
keep-alive scheme), with the fixes needed to make it run.  Every deviation from the
seed's code is marked "FIXUP" below.  Summary:

server
  * bind address, port, keep-alive timeout (30) and sweep interval (10) are options.
  * undecodable bytes are decoded with U+FFFD replacement instead of crashing.
  * a keep-alive from an unregistered ID is ignored (the seed recorded it in recvTime,
    and its sweep then crashed on registerList.get(ID)[0]).
  * "@exit" from an unregistered ID is ignored (the seed crashed on None[0]).
  * a datagram that is neither keep-alive, exit, nor "ID PRIVATE_IP" is ignored (the
    seed crashed on split(" ")[1]).
  * the garbled off-line message is completed as "ID is off-line IP:PORT".
  * state is guarded by a lock (the seed's Timer thread raced the receive loop).
  * "same NAT" = same public IP and same first three octets of the private IP (the
    seed says "same prefix" without defining it).
  * clean exit (status 0) on SIGINT/SIGTERM.

client
  * ID, server address, bind address, port (10081), server port (10080), keep-alive
    interval (10) and the peer port used for same-NAT chat (10081) are options; missing
    --id / --server are prompted for exactly like the seed ("Enter client ID: ",
    "Enter server IP address: ").
  * private IP: --private-ip overrides; otherwise the seed's trick (connect a UDP socket
    towards the server, read the local address), with that socket bound to --bind
    when --bind is a specific address (so a loopback alias reports itself).
  * incoming "@chat" is recognised before the unregistered/off-line notices (the seed
    tested "unregistered"/"off-line" first, so a chat text containing "off-line" was
    taken for a notice and crashed the receive thread).
  * a notice's ID is the text before " is " (the seed used split("is")[0][:-1], which
    breaks for IDs containing "is"), and the client ignores a notice about itself by
    comparing IDs (the seed used a substring test).
  * same-NAT chat goes to (private IP, --peer-port) (the seed used an undefined name).
  * "@chat" without ID and text prints a usage line on stderr (the seed crashed).
  * stdin is read line by line; end of input acts as "@exit".
  * --trace prints every received datagram on stderr as "recv IP:PORT TEXT" (stdout
    stays exactly the seed's screen output).

Usage:
  classic_peers.py server --bind 127.0.0.1 --port 10080 [--timeout 30 --sweep 10]
  classic_peers.py client --bind 127.0.0.5 --port 10081 --id X --server 127.0.0.1
                          --server-port 10080 [--keepalive 10] [--private-ip IP]
                          [--peer-port 10081] [--trace]
"""

import argparse
import os
import signal
import sys
import threading
import time
from socket import AF_INET, SOCK_DGRAM, socket

_out_lock = threading.Lock()


def out(line):
    """Print one line on stdout and flush (the seed's print())."""
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def diag(line):
    with _out_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def decode(message):
    # FIXUP: the seed called message.decode() and died on invalid UTF-8.
    return message.decode("utf-8", errors="replace")


class DaemonTimer(threading.Timer):
    def __init__(self, interval, function):
        super().__init__(interval, function)
        self.daemon = True


# --------------------------------------------------------------------------- server


def private_prefix(ip):
    return ip.split(".")[:3]


def same_nat(a, b):
    """a, b: (public ip, private ip). The seed: same public IP, same private prefix."""
    return a[0] == b[0] and private_prefix(a[1]) == private_prefix(b[1])


class ClassicServer:
    def __init__(self, bind, port, timeout, sweep):
        self.timeout = timeout
        self.sweep = sweep
        self.registerList = {}  # client ID -> (public ip, port)
        self.privateList = {}  # client ID -> (public ip, private ip)
        self.recvTime = {}  # client ID -> keep-alive receiving time
        self.lock = threading.Lock()  # FIXUP
        self.serverSocket = socket(AF_INET, SOCK_DGRAM)
        self.serverSocket.bind((bind, port))

    def send(self, text, addr):
        try:
            self.serverSocket.sendto(text.encode(), addr)
        except OSError as e:  # FIXUP: never let one bad destination kill the server
            diag(f"sendto {addr} failed: {e}")

    def keepTimer(self):
        with self.lock:
            now = time.monotonic()
            for clientID in list(self.recvTime):
                # detect client termination without receiving an unregistration request
                if now - self.recvTime[clientID] > self.timeout:
                    ip, port = self.registerList[clientID]
                    sendMsg = clientID + " is off-line " + ip + ":" + str(port)
                    out(sendMsg)
                    del self.registerList[clientID]
                    del self.recvTime[clientID]
                    del self.privateList[clientID]
                    for addr in list(self.registerList.values()):
                        self.send(sendMsg, addr)
        timer = DaemonTimer(self.sweep, self.keepTimer)
        timer.start()

    def handle(self, message, clientAddr):
        exiting = False
        privateAddr = ""
        if "@keepalive" in message:
            clientID = message.split("@")[0]
            if clientID in self.registerList:  # FIXUP: ignore unknown IDs
                self.recvTime[clientID] = time.monotonic()  # update receiving time
            return
        elif "@exit" in message:
            clientID = message.split(" ")[0]
            if clientID not in self.registerList:  # FIXUP: the seed crashed here
                return
            exiting = True
            ip, port = self.registerList[clientID]
            sendMsg = clientID + " is unregistered " + ip + ":" + str(port)
        else:
            parts = message.split(" ")
            if len(parts) < 2:  # FIXUP: the seed crashed on split(" ")[1]
                return
            clientID = parts[0]
            privateAddr = parts[1]
            sendMsg = clientID + " " + clientAddr[0] + ":" + str(clientAddr[1])

        out(sendMsg)

        if not exiting:
            # send the existing registration list to the newcomer, with the private
            # address of those behind the same NAT
            newcomer = (clientAddr[0], privateAddr)
            for otherID, (ip, port) in list(self.registerList.items()):
                self.send(otherID + " " + ip + ":" + str(port), clientAddr)
                if same_nat(self.privateList[otherID], newcomer):
                    self.send(otherID + "@private:" + self.privateList[otherID][1], clientAddr)
            self.registerList[clientID] = clientAddr
            self.recvTime[clientID] = time.monotonic()
            self.privateList[clientID] = newcomer

        # tell every registered client (the newcomer / leaver included)
        for otherID, addr in list(self.registerList.items()):
            self.send(sendMsg, addr)
            if not exiting and same_nat(self.privateList[otherID], self.privateList[clientID]):
                self.send(clientID + "@private:" + privateAddr, addr)

        if exiting:
            del self.registerList[clientID]
            del self.recvTime[clientID]
            del self.privateList[clientID]

    def run(self):
        out("server program starts....")
        timer = DaemonTimer(self.sweep, self.keepTimer)
        timer.start()
        while True:
            message, clientAddr = self.serverSocket.recvfrom(2048)
            with self.lock:
                self.handle(decode(message), clientAddr)


def _exit_cleanly(signum, frame):
    # FIXUP: clean exit (status 0) on SIGINT/SIGTERM; os._exit so that no state of the
    # interrupted main thread or of the Timer threads can turn it into a traceback.
    try:
        sys.stdout.flush()
    finally:
        os._exit(0)


def server_main(args):
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    server = ClassicServer(args.bind, args.port, args.timeout, args.sweep)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


# --------------------------------------------------------------------------- client


class ClassicClient:
    def __init__(self, clientID, serverAddr, args):
        self.clientID = clientID
        self.serverAddr = serverAddr
        self.serverPort = args.server_port
        self.peerPort = args.peer_port
        self.keepalive = args.keepalive
        self.trace = args.trace
        self.registerList = {}  # client ID -> "public ip:port"
        self.privateList = {}  # client ID -> private ip (same NAT only)
        self.lock = threading.Lock()  # FIXUP
        self.stop = False
        self.timer = None

        self.clientSocket = socket(AF_INET, SOCK_DGRAM)
        self.clientSocket.bind((args.bind, args.port))

        # get private IP address
        if args.private_ip:
            self.privateIP = args.private_ip
        else:
            ipSocket = socket(AF_INET, SOCK_DGRAM)
            if args.bind not in ("", "0.0.0.0"):
                ipSocket.bind((args.bind, 0))  # FIXUP: see module docstring
            ipSocket.connect((serverAddr, 80))
            self.privateIP = ipSocket.getsockname()[0]
            ipSocket.close()

    def send_server(self, text):
        self.send(text, (self.serverAddr, self.serverPort))

    def send(self, text, addr):
        try:
            self.clientSocket.sendto(text.encode(), addr)
        except OSError as e:
            diag(f"sendto {addr} failed: {e}")

    def keepTimer(self):
        if self.stop:
            return
        self.send_server(self.clientID + "@keepalive")
        self.timer = DaemonTimer(self.keepalive, self.keepTimer)
        self.timer.start()

    def recvExecute(self):
        while not self.stop:
            try:
                message, addr = self.clientSocket.recvfrom(2048)
            except OSError:
                return
            text = decode(message)
            with self.lock:
                self.handle(text)
                if self.trace:  # after handling: a traced entry is already in the lists
                    diag(f"recv {addr[0]}:{addr[1]} {text}")

    def handle(self, message):
        if "@chat" in message:  # FIXUP: tested first (see module docstring)
            fromID = message.split("@chat")[0]
            msg = message.split("@chat", 1)[1]
            if msg.startswith(" "):
                msg = msg[1:]
            out("From " + fromID + " [" + msg + "]")
        elif "unregistered" in message or "off-line" in message:
            userID = message.split(" is ")[0]  # FIXUP
            if userID != self.clientID:  # FIXUP
                self.registerList.pop(userID, None)
                self.privateList.pop(userID, None)
        elif "@private" in message:
            userID = message.split("@private:")[0]
            privateAddr = message.split("@private:", 1)[1]
            self.privateList[userID] = privateAddr
        else:
            parts = message.split(" ")
            if len(parts) >= 2:
                self.registerList[parts[0]] = parts[1]

    def command(self, command):
        """Handle one command line; returns False on @exit."""
        if command == "@exit":
            return False
        elif command == "@show_list":
            with self.lock:
                entries = list(self.registerList.items())
            for userID, addrport in entries:
                out(userID + " " + addrport)
        elif "@chat" in command:
            parts = command.split(" ", 2)
            if len(parts) < 3:  # FIXUP: the seed crashed here
                diag("usage: @chat ID TEXT")
                return True
            msgID, content = parts[1], parts[2]
            with self.lock:
                private = self.privateList.get(msgID)
                public = self.registerList.get(msgID)
            # under the same NAT
            if private is not None:
                self.send(self.clientID + "@chat " + content, (private, self.peerPort))
            elif public is not None:
                addr, _, port = public.rpartition(":")
                try:
                    dest = (addr, int(port))
                except ValueError:
                    diag(f"bad address for {msgID}: {public}")
                    return True
                self.send(self.clientID + "@chat " + content, dest)
            else:
                out("There is no " + msgID + " in registration list.")
        return True

    def run(self):
        self.clientSocket.settimeout(None)
        self.send_server(self.clientID + " " + self.privateIP)
        self.timer = DaemonTimer(self.keepalive, self.keepTimer)
        self.timer.start()
        recvThread = threading.Thread(target=self.recvExecute, daemon=True)
        recvThread.start()
        while True:
            line = sys.stdin.readline()
            if not line:  # end of input = @exit
                break
            if not self.command(line.rstrip("\r\n")):
                break
        self.send_server(self.clientID + " @exit")
        self.stop = True
        if self.timer is not None:
            self.timer.cancel()
        return 0


def client_main(args):
    try:
        clientID = args.id if args.id is not None else input("Enter client ID: ")
        serverAddr = args.server if args.server is not None else input("Enter server IP address: ")
    except EOFError:
        return 1
    client = ClassicClient(clientID.strip(), serverAddr.strip(), args)
    try:
        return client.run()
    except KeyboardInterrupt:
        return 0


# --------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)

    s = sub.add_parser("server", help="the seed's server.py")
    s.add_argument("--bind", default="")
    s.add_argument("--port", type=int, default=10080)
    s.add_argument("--timeout", type=float, default=30.0, help="keep-alive timeout, s")
    s.add_argument("--sweep", type=float, default=10.0, help="sweep interval, s")

    c = sub.add_parser("client", help="the seed's client.py")
    c.add_argument("--bind", default="")
    c.add_argument("--port", type=int, default=10081)
    c.add_argument("--id", default=None)
    c.add_argument("--server", default=None)
    c.add_argument("--server-port", type=int, default=10080)
    c.add_argument("--keepalive", type=float, default=10.0, help="keep-alive interval, s")
    c.add_argument("--private-ip", default=None)
    c.add_argument("--peer-port", type=int, default=10081,
                   help="port used for same-NAT chat to a peer's private IP")
    c.add_argument("--trace", action="store_true",
                   help="print every received datagram on stderr")

    args = parser.parse_args(argv)
    if args.role == "server":
        return server_main(args)
    return client_main(args)


if __name__ == "__main__":
    sys.exit(main())
