"""Scoring on the cluster as it is now, not as it was at start.

A node lost mid-run must neither hang the job nor cost its rows:
- each scoring pass sizes its actor pool from the nodes alive at that moment (:func:`wait_for_pool`),
  waits at most ``ray.capacity_wait_s`` for room for one actor, then fails naming the nodes;
- during a pass, :class:`NodeWatch` notices nodes that die and, once Ray has had ``grace_s`` to
  restart their scoring actors elsewhere, kills those still placed there: their tasks then fail and
  their rows go to the next pass instead of waiting forever for a restart no node can host;
- :class:`StepErrors` keeps Ray Data's I/O failures apart from scoring failures. Passes run with
  ``max_errored_blocks=-1`` so that a batch whose actor died is retried later, row by row if need
  be; a failed read, write or checkpoint step would be swallowed the same way (an output path a
  worker cannot see once gave 88 rows for 40 ids), so any error of a step other than scoring fails
  the pass with its cause.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from curate.config import ConfigError, CurateConfig
from curate.placement import NodeResources, actors_per_node, cluster_nodes

log = logging.getLogger(__name__)

# Logical CPUs Ray Data's read, write and checkpoint-filter work holds beside the scoring actors.
RESERVED_CPUS = 2.0
_POLL_S = 5.0
# A node that does not run a zero-CPU task within this long is not counted (its loss may not be
# known to Ray yet: the health check takes tens of seconds to declare a node dead).
_RESPONSE_S = 30.0


class ClusterCapacityError(ConfigError):
    """The cluster can no longer hold a scoring actor (the command line prints it as one line, like a
    configuration mistake: the cluster no longer fits the config)."""


def pool_bounds(cfg: CurateConfig, nodes: Sequence[NodeResources]) -> tuple[int, int]:
    """``(min, max)`` scoring actors these nodes can hold now, within ``ray.min_actors..max_actors``
    (0 when none fits)."""
    r = cfg.ray
    capacity = sum(actors_per_node(nodes, r.num_cpus, r.num_gpus).values())
    if r.num_cpus > 0:
        spare = sum(n.cpus for n in nodes) - RESERVED_CPUS
        capacity = min(capacity, max(0, math.floor(spare / r.num_cpus + 1e-9)))
    return min(r.min_actors, capacity), min(r.max_actors, capacity)


def _describe(nodes: Sequence[NodeResources]) -> str:
    return ", ".join(f"{n.name} ({n.cpus:g} CPU, {n.gpus:g} GPU)" for n in nodes) or "none"


def responsive_nodes() -> list[dict[str, Any]]:
    """The ``ray.nodes()`` entries Ray calls alive that also run a task now (one zero-CPU task pinned
    to each)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in ray.nodes() if n.get("Alive")]
    ping = ray.remote(num_cpus=0, max_retries=0)(_node_id)
    refs = {ping.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote():
            n for n in alive}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=_RESPONSE_S)
    answered = set()
    for ref in ready:
        with contextlib.suppress(Exception):  # the node died under the task
            answered.add(ray.get(ref))
    for ref in late:
        with contextlib.suppress(Exception):  # the node may be gone with the task
            ray.cancel(ref, force=True)
        log.warning("node %s did not answer within %g s; not counted", refs[ref].get("NodeManagerAddress"), _RESPONSE_S)
    return [n for n in alive if n["NodeID"] in answered]


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def wait_for_pool(cfg: CurateConfig, lost: Sequence[str] = ()) -> tuple[int, int, set[str]]:
    """The pool for the next pass: ``(min, max)`` actors, at least one, and the ids of the nodes it
    was sized on. Waits up to ``ray.capacity_wait_s`` for a node to hold one, then raises
    :class:`ClusterCapacityError`."""
    r = cfg.ray
    deadline = time.monotonic() + r.capacity_wait_s
    while True:
        found = responsive_nodes()
        nodes = cluster_nodes(found)
        low, high = pool_bounds(cfg, nodes)
        if high >= 1:
            if low < r.min_actors:
                log.warning("the cluster holds %d scoring actor(s) now (ray.min_actors=%d): nodes %s; "
                            "this pass runs with %d..%d", high, r.min_actors, _describe(nodes), max(low, 1), high)
            return max(low, 1), high, {n["NodeID"] for n in found}
        if time.monotonic() >= deadline:
            raise ClusterCapacityError(
                f"no room left for a scoring actor of {r.num_cpus:g} CPU and {r.num_gpus:g} GPU (plus "
                f"{RESERVED_CPUS:g} CPU for Ray Data's reads and writes): alive nodes: {_describe(nodes)}"
                f"{'; lost during this run: ' + ', '.join(lost) if lost else ''}; waited {r.capacity_wait_s:g} s "
                "(ray.capacity_wait_s). Rows written so far are kept: rerun the same command on a cluster "
                "with room to resume.")
        log.warning("no node can hold a scoring actor now (alive: %s); waiting for capacity, %.0f s left",
                    _describe(nodes), deadline - time.monotonic())
        time.sleep(_POLL_S)


class NodeWatch(threading.Thread):
    """During a pass: logs nodes that die and kills the scoring actors still placed on a dead node
    ``grace_s`` after it died (Ray restarts an actor elsewhere when a node has room; one it cannot
    place would hold its tasks forever). ``counter.placements()`` lists ``(actor, node_id)``."""

    def __init__(self, counter: Any, grace_s: float, every_s: float = _POLL_S):
        super().__init__(daemon=True, name="node-watch")
        self.counter, self.grace_s, self.every_s = counter, grace_s, every_s
        self.stopped = threading.Event()
        self.lost: dict[str, tuple[str, float]] = {}
        """node id -> (node address, when it was seen dead)"""
        self.killed = 0

    def run(self) -> None:
        import ray

        known: dict[str, str] = {}
        while not self.stopped.wait(self.every_s):
            try:
                now = time.monotonic()
                for node in ray.nodes():
                    node_id, name = node["NodeID"], str(node.get("NodeManagerAddress"))
                    if node.get("Alive"):
                        known[node_id] = name
                    elif node_id in known and node_id not in self.lost:
                        self.lost[node_id] = (name, now)
                        log.warning("node %s (%s) was lost; its scoring actors' rows will be scored again",
                                    name, node_id[:12])
                for actor, node_id in ray.get(self.counter.placements.remote(), timeout=30):
                    if node_id in self.lost and now - self.lost[node_id][1] >= self.grace_s:
                        ray.kill(actor, no_restart=True)
                        self.killed += 1
                        log.warning("stopped a scoring actor left on lost node %s", self.lost[node_id][0])
            except Exception as err:  # the watch must never end the run; the next round tries again
                log.debug("node watch: %r", err)

    def seen_lost(self) -> list[str]:
        """The nodes this watch saw die."""
        return [name for name, _ in self.lost.values()]

    def lost_since(self, sized_on: set[str], answering: set[str]) -> list[str]:
        """Nodes lost during the pass: seen dying, or among ``sized_on`` (the nodes the pass started
        with) and not ``answering`` when the next pass is sized (the health check can take longer
        than a short pass)."""
        gone = sized_on - answering - self.lost.keys()
        return self.seen_lost() + [node_id[:12] for node_id in sorted(gone)]


class StepErrors(logging.Handler):
    """Collects the block errors Ray Data logs and ignores (``max_errored_blocks=-1``), by step."""

    LOGGER = "ray.data._internal.execution.streaming_executor_state"
    _OPERATOR = re.compile(r'An exception was raised from a task of operator "([^"]+)"')

    def __init__(self, scoring_step: str):
        super().__init__(level=logging.ERROR)
        self.scoring_step = scoring_step
        self.errors: list[tuple[str, BaseException | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self._OPERATOR.search(record.getMessage())
        if m and self.scoring_step not in m.group(1):
            self.errors.append((m.group(1), record.exc_info[1] if record.exc_info else None))

    def __enter__(self) -> StepErrors:
        logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)

    def raise_first(self) -> None:
        """Fail with the first non-scoring step's error, if any."""
        if self.errors:
            step, err = self.errors[0]
            more = f" ({len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            raise RuntimeError(f"Ray Data's {step} step failed{more}: {_cause(err)}") from err


_ERROR_LINE = re.compile(r"^(?!ray\.exceptions\.)([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$", re.MULTILINE)


def _cause(err: BaseException | None) -> str:
    """What went wrong in the task: the first error line of the remote traceback Ray attaches
    (the driver-side exception wraps it in RayTaskError/UserCodeException), else ``err`` itself."""
    m = _ERROR_LINE.search(str(err))
    return f"{m.group(1)}: {m.group(2)}" if m else repr(err)
