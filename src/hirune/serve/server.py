"""Serving the app: bind the port first (a port in use is a clear error, not a traceback
from inside the server), then hand the bound socket to uvicorn.

    serve("runs")                                  # http://127.0.0.1:7860, until Ctrl-C
    sock = bind("127.0.0.1", 0)                    # a free port: sock.getsockname()[1]
    server = make_server(make_app("runs"), sock)   # server.run(sockets=[sock]) in a thread;
                                                   # server.should_exit = True stops it

The default host is the loopback address: the page reaches only this machine.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


class PortInUse(OSError):
    """The port is taken (another server, or an earlier hirune serve still running)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one.  PortInUse where
    the port is taken; ValueError for a port outside 0..65535 or a host that does not resolve."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is not valid; valid: 0..65535 (0: a free one)")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise ValueError(f"host {host!r} does not resolve ({e.strerror}); valid: an address of this machine, "
                         f"e.g. {DEFAULT_HOST}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(errno.EADDRINUSE, f"port {port} is in use on {host}; pass --port N (or --port 0 "
                                              "for a free one)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"host {host!r} is not an address of this machine; valid: e.g. {DEFAULT_HOST}, "
                             "or 0.0.0.0 for every interface") from None
        raise
    sock.listen(128)
    return sock


def make_server(app, sock: socket.socket):
    """A uvicorn server for `app` on the bound `sock` (its run(sockets=[sock]) blocks)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def serve(runs_root: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the page over the runs under `runs_root` until interrupted."""
    from .app import make_app

    if not Path(runs_root).is_dir():
        raise FileNotFoundError(f"--runs {runs_root}: no such folder; valid: a folder of run folders (hirune train "
                                "... out=FOLDER/NAME writes one there)")
    sock = bind(host, port)  # before the app and uvicorn load: a taken port fails fast
    app = make_app(runs_root)
    print(f"hirune serve: runs under {Path(runs_root).resolve()} on {url(sock)} (Ctrl-C stops)", flush=True)
    make_server(app, sock).run(sockets=[sock])


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "PortInUse", "bind", "is_loopback", "make_server", "serve", "url"]
