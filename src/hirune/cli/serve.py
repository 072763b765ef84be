"""`hirune serve`: a local web page over the trained runs in a folder."""

from __future__ import annotations

import argparse
import sys

from .common import CLIError


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="a local web page over trained runs: sample, edit, loss curves",
                       description="Serve a page (FastAPI; pip install 'hirune[serve]') to pick a run under --runs, "
                                   "a class or prompt, sampler, steps, guidance and seed, and see the samples, "
                                   "the denoising trajectory and its x0 estimates; upload an image to invert and "
                                   "edit it; follow a run's loss curve while it trains.")
    p.add_argument("--runs", default="runs", help="the folder whose run folders the page offers (default: runs)")
    p.add_argument("--host", default=None,
                   help="address to bind (default 127.0.0.1: this machine only; anything else is reachable from "
                        "the network, with a warning)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860; 0: a free one)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.server import DEFAULT_HOST, DEFAULT_PORT, PortInUse, is_loopback, serve

    host = DEFAULT_HOST if args.host is None else args.host
    if not is_loopback(host):
        print(f"hirune serve: warning: binding {host}, not the loopback address: anyone who can reach this machine "
              "can use the page (it has no login)", file=sys.stderr)
    try:
        serve(args.runs, host, DEFAULT_PORT if args.port is None else args.port)
    except PortInUse as e:
        raise CLIError(e.strerror) from None
    except KeyboardInterrupt:
        pass
    return 0
