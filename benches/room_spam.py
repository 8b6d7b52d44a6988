#!/usr/bin/env python3
"""Room spam: clients that create rooms without end must not grow the server without end.

A client independent of our load tool (plain Python, standard library only, its own
WebSocket framing) opens a few connections; each joins a fresh room, posts one message and
leaves, as fast as the server answers. After every round of ROOMS rooms it waits for the
rooms to go idle and prints the server's resident memory (from /proc, so run it on the
server's machine) and how many rooms' numbering the hub still keeps.

    target/release/switchboard --ws-rate 1000000 --ws-burst 1000000 \\
        --rate-limit 1000000 --rate-limit-burst 1000000 --history-room-idle 2s &
    benches/room_spam.py --pid $! [--url ws://127.0.0.1:8080/ws --rooms 100000
                                   --rounds 6 --connections 8 --idle 6]

Bounded: ROUNDS x ROOMS rooms, then it stops.
"""

import argparse
import base64
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request


def connect(url):
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {parts.path or '/'}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the upgrade")
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        raise RuntimeError(f"upgrade refused: {status!r}")
    return Conn(sock, head.split(b"\r\n\r\n", 1)[1])


class Conn:
    def __init__(self, sock, pending):
        self.sock = sock
        self.buf = bytearray(pending)

    def send(self, obj):
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        header = bytearray([0x81])
        if len(payload) < 126:
            header.append(0x80 | len(payload))
        else:
            header.append(0x80 | 126)
            header += struct.pack("!H", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(header) + mask + masked)

    def recv(self):
        """The next text frame as JSON (server frames are not masked)."""
        while True:
            frame = self._frame()
            if frame is None:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                self.buf += chunk
                continue
            opcode, payload = frame
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                raise RuntimeError(f"closed by the server: {payload!r}")
            if opcode == 0x9:  # ping: answer it
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def _frame(self):
        if len(self.buf) < 2:
            return None
        length, at = self.buf[1] & 0x7F, 2
        if length == 126:
            if len(self.buf) < 4:
                return None
            length, at = struct.unpack("!H", self.buf[2:4])[0], 4
        elif length == 127:
            if len(self.buf) < 10:
                return None
            length, at = struct.unpack("!Q", self.buf[2:10])[0], 10
        if len(self.buf) < at + length:
            return None
        opcode, payload = self.buf[0] & 0x0F, bytes(self.buf[at : at + length])
        del self.buf[: at + length]
        return opcode, payload


def spam(url, rooms, errors):
    conn = connect(url)
    conn.recv()  # the welcome
    for room in rooms:
        conn.send({"type": "join", "room_id": room})
        conn.send({"type": "message", "room_id": room, "content": "x"})
        conn.send({"type": "leave", "room_id": room})
        while True:
            frame = conn.recv()
            if frame.get("type") == "error":
                errors.append(frame.get("content"))
            if frame.get("type") == "leave" and frame.get("room_id") == room:
                break
    conn.sock.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def numbered_rooms(url):
    parts = urllib.parse.urlsplit(url)
    with urllib.request.urlopen(f"http://{parts.netloc}/health", timeout=10) as answer:
        return json.load(answer)["checks"]["hub:connections"][0]["stats"]["numbered_rooms"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws?user_id=spammer")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--rooms", type=int, default=100_000, help="rooms per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--idle", type=float, default=6.0, help="seconds to wait after a round")
    args = parser.parse_args()

    print(f"start: rss {rss_kib(args.pid) / 1024:.1f} MiB, numbered rooms {numbered_rooms(args.url)}")
    for round_no in range(args.rounds):
        names = [f"spam-{round_no}-{i}" for i in range(args.rooms)]
        errors = []
        started = time.time()
        threads = [
            threading.Thread(target=spam, args=(args.url, names[i :: args.connections], errors))
            for i in range(args.connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.time() - started
        busy = rss_kib(args.pid)
        time.sleep(args.idle)
        print(
            f"round {round_no + 1}: {args.rooms} rooms in {elapsed:.1f}s "
            f"({args.rooms / elapsed:.0f}/s, {len(errors)} errors); "
            f"rss {busy / 1024:.1f} MiB right after, {rss_kib(args.pid) / 1024:.1f} MiB idle; "
            f"numbered rooms {numbered_rooms(args.url)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
