"""Relay a loopback port inside a network namespace to an address of this (the root) namespace.

    python3 e2e/netns_relay.py NETNS UPSTREAM_HOST UPSTREAM_PORT PORT_FILE

Listens on 127.0.0.1 (a free port) inside NETNS (/run/netns/NETNS), writes that port to
PORT_FILE, and relays every connection to UPSTREAM_HOST:UPSTREAM_PORT as seen from here. A process
in the namespace (a controller next to lab hosts) reaches a server outside it (the API server)
this way. Runs until killed.

A thread that enters a namespace (setns) creates its sockets there, and they stay there whichever
thread uses them; Python 3.11 has no os.setns, so libc's is called through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def listener_in(netns: str) -> socket.socket:
    box: dict[str, object] = {}

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
            os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            box["socket"] = s
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["socket"]  # type: ignore[return-value]


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listener: socket.socket, upstream: tuple[str, int]) -> None:
    while True:
        inside, _ = listener.accept()
        try:
            outside = socket.create_connection(upstream, timeout=10)
            outside.settimeout(None)
        except OSError:
            inside.close()
            continue
        for a, b in ((inside, outside), (outside, inside)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


def main() -> None:
    netns, host, port, port_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    listener = listener_in(netns)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    serve(listener, (host, port))


if __name__ == "__main__":
    main()
