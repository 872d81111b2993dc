#!/usr/bin/env python3
"""A TCP relay that adds a fixed one-way delay to every chunk, in both directions.

Stands in for `tc netem` where that is missing: llama.cpp's RPC client connects to
LISTEN_PORT, the relay forwards to TARGET_PORT after DELAY_MS. Order is kept per direction.
Threads and time.sleep (microsecond timers), not asyncio (millisecond epoll timeouts).
usage: delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
"""
import queue
import socket
import sys
import threading
import time

listen_port, target_port, delay_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000


def relay(src, dst):
    chunks = queue.Queue()

    def send():
        while True:
            due, data = chunks.get()
            if data is None:
                break
            wait_s = due - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            try:
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    while True:
        try:
            data = src.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            break
        chunks.put((time.monotonic() + delay_s, data))
    chunks.put((0, None))
    sender.join()


def serve(client):
    upstream = socket.create_connection(("127.0.0.1", target_port))
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=relay, args=(client, upstream), daemon=True).start()
    threading.Thread(target=relay, args=(upstream, client), daemon=True).start()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", listen_port))
listener.listen()
while True:
    conn, _ = listener.accept()
    serve(conn)
