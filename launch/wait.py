"""Wait until a Ray cluster has the nodes and GPUs a job needs (launch/slurm.sbatch, launch/ssh_cluster.sh).

    python -m launch wait --nodes 2 --gpus 16 [--address HEAD:6379] [--timeout 600]

Without it a job submitted to a half-started cluster either waits silently for GPUs that have not
joined yet or, worse, sizes itself to what is there. Exits 0 once the cluster's alive nodes and GPUs
reach the counts, 1 on timeout (naming what is missing).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="GCS address HOST:PORT (default: $RAY_ADDRESS)")
    parser.add_argument("--nodes", type=int, required=True, help="alive nodes to wait for")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs (in total) to wait for")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before giving up")
    parser.add_argument("--poll", type=float, default=2, help="seconds between checks")


def cluster_counts() -> tuple[int, float]:
    """(alive nodes, GPUs on them) as the GCS sees them now."""
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    return len(alive), sum(n["Resources"].get("GPU", 0) for n in alive)


def wait_for_port(address: str, deadline: float, poll: float) -> bool:
    """True once something accepts connections at HOST:PORT (``ray.init`` would retry for minutes,
    past any deadline, while the head is still starting)."""
    host, _, port = address.rpartition(":")
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=poll).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)


def main(args: argparse.Namespace) -> int:
    import ray

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address or ":" not in address:
        print("python -m launch wait: give --address HOST:PORT or set RAY_ADDRESS", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout
    if not wait_for_port(address, deadline, args.poll):
        print(f"python -m launch wait: nothing listens at {address} after {args.timeout:g}s; see the head's "
              "ray start output", file=sys.stderr)
        return 1
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    seen = None
    while True:
        nodes, gpus = cluster_counts()
        if (nodes, gpus) != seen:
            print(f"cluster {address}: {nodes}/{args.nodes} nodes, {gpus:g}/{args.gpus:g} GPUs", flush=True)
            seen = (nodes, gpus)
        if nodes >= args.nodes and gpus >= args.gpus:
            return 0
        if time.monotonic() > deadline:
            print(f"python -m launch wait: after {args.timeout:g}s the cluster has {nodes} of {args.nodes} nodes "
                  f"and {gpus:g} of {args.gpus:g} GPUs; see the nodes' ray start logs", file=sys.stderr)
            return 1
        time.sleep(args.poll)
