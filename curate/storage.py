"""Where a run's files live: a local directory, a shared filesystem, or an object store, behind one type.

Every path a user gives for data the project writes or reads back (``output.path``, ``curate select``'s
``input``/``output``, ``curate report``'s run directory; ``data.path`` and ``rl train``'s data files
through :func:`stage`) is parsed once into a :class:`Location`: a ``pyarrow.fs`` filesystem and the path
inside it. Strings with a scheme go through ``pyarrow.fs.FileSystem.from_uri``, so whatever pyarrow
supports works: ``file://``, ``s3://`` (AWS or any S3-compatible store such as MinIO), ``gs://``,
``hdfs://`` (with libhdfs), and pyarrow reads the credentials the way it always does (for S3:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` for a
non-AWS endpoint, or the URI's own ``?endpoint_override=host:port&scheme=http``). Anything else is a
local path, made absolute as before (``Path.resolve()``).

Before this module ``s3://bucket/run`` silently became a local folder named ``s3:``. Now a URI is used
as the URI it is, a relative output path under a Ray job is refused (it would land in the job's
temporary working directory on the head node), and :func:`check_visible_from_every_node` refuses a
local output path that some node of a multi-node cluster cannot see.

Shown to people (logs, errors, manifests), a location is ``scheme://path`` without the URI's query,
which may hold credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.fs as pafs

from curate.config import ConfigError

__all__ = [
    "Location",
    "check_visible_from_every_node",
    "describe_nodes",
    "is_uri",
    "location",
    "nodes_missing",
    "ray_job_id",
    "stage",
]

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Ray's job supervisor sets this in the environment of every `ray job submit` entrypoint (Ray 2.60:
# dashboard/modules/job/job_supervisor.py, _get_driver_env_vars); its metadata names the submission.
_RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def is_uri(value: str | os.PathLike[str]) -> bool:
    """Whether ``value`` names its filesystem (``scheme://...``)."""
    return isinstance(value, str) and _SCHEME.match(value) is not None


def ray_job_id() -> Optional[str]:
    """The submission id when this process is a Ray job's entrypoint (``ray job submit``), else None."""
    raw = os.environ.get(_RAY_JOB_CONFIG_ENV)
    if raw is None:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        metadata = {}
    return str(metadata.get("job_submission_id") or "?")


class Location:
    """A file or directory on some filesystem: ``filesystem`` + ``path`` inside it.

    ``path`` is what the filesystem takes: an absolute path for the local filesystem, ``bucket/key``
    for S3 and GCS. ``loc / "name"`` joins; the methods cover what the project does with a run
    directory (exists, list, read/write bytes and text, delete, open for Parquet, copy trees in and
    out). A local location is ``is_local`` and its :attr:`local` is the ``Path``.
    """

    __slots__ = ("filesystem", "path", "scheme")

    def __init__(self, filesystem: pafs.FileSystem, path: str, scheme: str = ""):
        self.filesystem = filesystem
        self.path = path.rstrip("/") if len(path) > 1 else path
        self.scheme = scheme

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def parse(cls, where: str | os.PathLike[str] | "Location", key: Optional[str] = None,
              output: bool = False) -> "Location":
        """The location ``where`` names. ``key`` is the config key it came from (named in errors);
        ``output`` marks a path this process will write: a relative one is refused under a Ray job."""
        if isinstance(where, Location):
            return where
        text = os.fspath(where)
        named = f"config key '{key}': " if key else ""
        if not is_uri(text):
            if output and not os.path.isabs(text) and ray_job_id() is not None:
                raise ConfigError(
                    f"{named}{text!r} is a relative path and this is a Ray job (submission {ray_job_id()}): "
                    f"it would be written inside the job's temporary working directory on the head node "
                    f"({os.getcwd()}), which other nodes cannot see and Ray may delete; give an absolute path on "
                    "storage every node mounts at the same place, or an object store URI (s3://bucket/run)"
                )
            return cls(pafs.LocalFileSystem(), str(Path(text).resolve()))
        scheme = _SCHEME.match(text).group(1).lower()
        try:
            filesystem, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, ValueError, OSError, NotImplementedError) as err:
            raise ConfigError(f"{named}cannot open {_shown(text)}: {err}") from None
        if isinstance(filesystem, pafs.LocalFileSystem):
            return cls(filesystem, str(Path(path).resolve()))
        return cls(filesystem, path, scheme)

    def _at(self, path: str) -> "Location":
        return Location(self.filesystem, path, self.scheme)

    # ---- names ----------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def local(self) -> Path:
        """The local path (only for a local location)."""
        if not self.is_local:
            raise ValueError(f"{self} is not on the local filesystem")
        return Path(self.path)

    def __truediv__(self, name: str) -> "Location":
        if self.is_local:
            return self._at(os.path.join(self.path, name))
        return self._at(posixpath.join(self.path, name))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.replace(os.sep, "/"))

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> "Location":
        if self.is_local:
            return self._at(os.path.dirname(self.path))
        return self._at(posixpath.dirname(self.path))

    def __str__(self) -> str:
        return self.path if self.is_local else f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Location) and (self.scheme, self.path) == (other.scheme, other.path)
                and type(self.filesystem) is type(other.filesystem))

    def __hash__(self) -> int:
        return hash((self.scheme, self.path))

    # ---- what is there --------------------------------------------------------------------

    def info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def children(self, suffix: str = "", recursive: bool = False) -> list["Location"]:
        """The files directly in this directory (all below it with ``recursive``) whose name ends with
        ``suffix``, sorted by path; ``[]`` when the directory does not exist."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        try:
            infos = self.filesystem.get_file_info(selector)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [self._at(i.path) for i in sorted(infos, key=lambda i: i.path)
                if i.type == pafs.FileType.File and i.base_name.endswith(suffix)]

    def has_children(self, suffix: str = "") -> bool:
        return bool(self.children(suffix))

    # ---- reading and writing --------------------------------------------------------------

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file: atomically (a temporary name, then a rename) on a local filesystem;
        an object store's single upload is atomic by itself."""
        if self.is_local:
            self.parent.mkdir()
            tmp = f"{self.path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return
        with self.filesystem.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def open_input(self) -> Any:
        """A random-access file (what ``pyarrow.parquet`` reads)."""
        return self.filesystem.open_input_file(self.path)

    def open_output(self) -> Any:
        if self.is_local:
            self.parent.mkdir()
        return self.filesystem.open_output_stream(self.path)

    def mkdir(self) -> None:
        """Create the directory and its parents (on an object store: nothing to do until a file is
        written; pyarrow may leave a marker)."""
        if self.is_local:
            os.makedirs(self.path, exist_ok=True)
        elif not self.exists():
            self.filesystem.create_dir(self.path, recursive=True)

    def delete(self) -> None:
        """Delete the file (nothing if it is not there)."""
        try:
            self.filesystem.delete_file(self.path)
        except FileNotFoundError:
            pass

    def delete_dir(self) -> None:
        """Delete the directory and everything below it (nothing if it is not there)."""
        if self.is_local:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.exists():
            self.filesystem.delete_dir(self.path)

    def move(self, target: "Location") -> None:
        """Rename a file or directory (an object store copies, then deletes)."""
        self.filesystem.move(self.path, target.path)

    # ---- trees ----------------------------------------------------------------------------

    def download(self, local: Path) -> None:
        """Copy this file or directory tree to the local path ``local``."""
        local.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(local), source_filesystem=self.filesystem,
                        destination_filesystem=pafs.LocalFileSystem())

    def upload(self, local: Path) -> None:
        """Copy the local file or directory tree ``local`` to this location."""
        if self.is_local:
            if local.is_dir():
                shutil.copytree(local, self.path, dirs_exist_ok=True)
            else:
                self.parent.mkdir()
                shutil.copy2(local, self.path)
            return
        pafs.copy_files(str(local), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)

    # ---- handing it to Ray Data -----------------------------------------------------------

    @property
    def ray_filesystem(self) -> Optional[pafs.FileSystem]:
        """``filesystem=`` for Ray Data's readers and writers: None for a local path (Ray resolves
        those itself, as before), the filesystem otherwise (so that a URI's options, such as its
        endpoint, reach every task)."""
        return None if self.is_local else self.filesystem

    def checkpoint_args(self) -> dict[str, Any]:
        """Ray Data's ``CheckpointConfig`` keywords for a checkpoint directory at this location (Ray 2.60
        takes the filesystem as ``override_filesystem``; for a local path it infers it, as before)."""
        if self.is_local:
            return {"checkpoint_path": self.path}
        return {"checkpoint_path": self.path, "override_filesystem": self.filesystem}


def location(where: str | os.PathLike[str] | Location) -> Location:
    """``where`` as a :class:`Location` (a ``Location`` stays itself)."""
    return Location.parse(where)


def _shown(uri: str) -> str:
    """A URI without its query (which may carry credentials)."""
    return uri.split("?", 1)[0]


# ---- a local path on a multi-node cluster -------------------------------------------------------


def _probe(paths: list[str], token: Optional[str]) -> bool:
    """On one node: whether every path exists (and, with ``token``, whether the first holds it)."""
    try:
        if token is not None:
            with open(paths[0], "rb") as f:
                return f.read() == token.encode()
        return all(os.path.exists(p) for p in paths)
    except OSError:
        return False


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _nodes_failing(nodes: list[dict[str, Any]], paths: list[str], token: Optional[str],
                   timeout_s: float) -> list[dict[str, Any]]:
    """The nodes on which :func:`_probe` is false (or does not answer within ``timeout_s``): one tiny
    task pinned to each (``NodeAffinitySchedulingStrategy``, ``soft=False``)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = {
        n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
        .remote(paths, token)
        for n in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    failing = []
    for node in nodes:
        ref = refs[node["NodeID"]]
        try:
            ok = ref in ready and ray.get(ref)
        except Exception:  # a node that died meanwhile cannot see it either
            ok = False
        if not ok:
            failing.append(node)
    return failing


def describe_nodes(nodes: list[dict[str, Any]]) -> str:
    return ", ".join(f"{n.get('NodeManagerAddress', '?')} (node {n['NodeID'][:12]})" for n in nodes)


def check_visible_from_every_node(where: Location, key: str, timeout_s: float = 120.0) -> None:
    """Refuse a local ``where`` that some alive node of the connected Ray cluster cannot see.

    A local output directory on a multi-node cluster must be the same shared filesystem on every
    node: Ray Data's write tasks run anywhere, and a path only the head could see gave wrong rows
    (issue 20). The driver writes a probe file under ``where`` and one tiny task pinned to each alive
    node reads it back; the nodes that cannot are named. A single-node cluster and a location that
    is not local pass without a probe.
    """
    if not where.is_local:
        return
    nodes = _alive_nodes()
    if len(nodes) <= 1:
        return
    where.mkdir()
    token = uuid.uuid4().hex
    probe = where / f".hardmode-probe-{token[:12]}"
    probe.write_text(token)
    try:
        blind = _nodes_failing(nodes, [probe.path], token, timeout_s)
    finally:
        probe.delete()
    if blind:
        raise ConfigError(
            f"config key '{key}': {where} is a local path that {len(blind)} of {len(nodes)} nodes of this Ray "
            f"cluster cannot see: {describe_nodes(blind)}. A multi-node cluster needs a shared filesystem "
            "mounted at the same path on every node, or an object store URI (e.g. s3://bucket/run; README, "
            "'Storage on a cluster')"
        )
    log.info("%s: %s is visible from all %d nodes", key, where, len(nodes))


def nodes_missing(paths: list[str], timeout_s: float = 120.0) -> tuple[list[dict[str, Any]], int]:
    """(the alive nodes on which some of the local ``paths`` does not exist, how many nodes are
    alive); no probe on a single-node cluster."""
    nodes = _alive_nodes()
    if len(nodes) <= 1:
        return [], len(nodes)
    return _nodes_failing(nodes, paths, None, timeout_s), len(nodes)


# ---- remote inputs, read locally ------------------------------------------------------------------


def cache_root() -> Path:
    """``$HARDMODE_CACHE``, else ``~/.cache/hardmode`` (the toy model's cache too)."""
    return Path(os.environ.get("HARDMODE_CACHE") or Path.home() / ".cache" / "hardmode")


def stage(where: str, key: str, cache: Optional[Path] = None) -> str:
    """A local path holding what ``where`` names: ``where`` itself when it is local, else a copy in
    the cache (``cache``, default ``<cache_root>/inputs``) of the file, the directory tree, or, for a
    glob (``s3://b/data/*.parquet``), the matching files.

    A copy is refreshed when the source's files differ in name, size or modification time (recorded
    beside it), so a rerun downloads nothing new. Modification times are copied, so that what keys a
    copied input (``curate run``'s ingest fingerprint) is the same from one download to the next.
    """
    if not is_uri(where):
        return where
    source_root, pattern = _split_glob(where)
    loc = Location.parse(source_root, key=key)
    if loc.is_local:
        return str(loc) if pattern is None else os.path.join(str(loc), pattern)
    info = loc.info()
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"config key '{key}': {loc} does not exist")
    if info.type == pafs.FileType.File and pattern is None:
        files = [(info.path, info.size, info.mtime_ns)]
    else:
        selector = pafs.FileSelector(loc.path, recursive=True)
        infos = [i for i in loc.filesystem.get_file_info(selector) if i.type == pafs.FileType.File]
        if pattern is not None:
            regex = re.compile(_glob_regex(pattern))
            infos = [i for i in infos if regex.fullmatch(posixpath.relpath(i.path, loc.path))]
        files = sorted((i.path, i.size, i.mtime_ns) for i in infos)
        if not files:
            raise ConfigError(f"config key '{key}': no files at {_shown(where)}")
    digest = hashlib.sha256(_shown(where).encode()).hexdigest()[:16]
    target = (cache or cache_root() / "inputs") / digest
    listing = target / ".hardmode-staged.json"
    base = loc.path if info.type == pafs.FileType.Directory else posixpath.dirname(loc.path)
    want = [[posixpath.relpath(p, base), size, mtime] for p, size, mtime in files]
    local_root = target / "data"
    if not (listing.is_file() and json.loads(listing.read_text()) == want):
        log.info("%s: copying %d file(s) from %s to %s", key, len(files), _shown(where), local_root)
        shutil.rmtree(target, ignore_errors=True)
        local_root.mkdir(parents=True)
        for (rel, _, mtime), (path, _, _) in zip(want, files):
            dest = local_root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(path, str(dest), source_filesystem=loc.filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
            if mtime is not None:
                os.utime(dest, ns=(mtime, mtime))
        listing.write_text(json.dumps(want))
    if pattern is not None:
        return os.path.join(str(local_root), pattern)
    if info.type == pafs.FileType.File:
        return str(local_root / posixpath.basename(loc.path))
    return str(local_root)


def _split_glob(uri: str) -> tuple[str, Optional[str]]:
    """(the part of ``uri`` before its first glob component, the glob after it or None)."""
    head, query = (uri.split("?", 1) + [""])[:2]
    scheme, rest = head.split("://", 1)
    parts = rest.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            root = f"{scheme}://{'/'.join(parts[:i])}" + (f"?{query}" if query else "")
            return root, "/".join(parts[i:])
    return uri, None


def _glob_regex(pattern: str) -> str:
    """A glob with ``**`` (any depth), ``*`` and ``?`` (within one name) as a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)
