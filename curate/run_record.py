"""``run.json``: what produced an annotated dataset, and what the run did.

Both ways of scoring (``python -m curate run`` on Ray, ``python -m curate score`` in-process) write
it in the run directory, beside ``annotated/`` (the shards): the resolved config, library versions, the model, and a fingerprint of
everything that changes the annotations. The same record goes into every shard's Parquet schema
metadata (``hardmode.run``), so a shard copied elsewhere still says where it came from. Resuming into a
directory written with another fingerprint is refused: the rows would carry mixed annotations.

Paths are :class:`curate.storage.Location` (local, or a URI such as ``s3://bucket/run``); a ``Path`` or
string is taken as one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from curate import schema
from curate.config import CurateConfig
from curate.scores import error_reason, read_scores
from curate.scoring import cmab_calibration, registry
from curate.storage import Location, location

__all__ = [
    "ANNOTATED_DIR", "RUN_FILE", "RUN_METADATA_KEY", "begin", "finish", "locate", "package_versions", "read",
    "scoring_fingerprint", "summarize",
]

ANNOTATED_DIR = "annotated"  # the run directory's Parquet shards of the annotated dataset
RUN_FILE = "run.json"
RUN_METADATA_KEY = b"hardmode.run"
_VERSIONED = ("hardmode", "ray", "torch", "transformers", "vllm", "pyarrow")


def scoring_fingerprint(cfg: CurateConfig) -> str:
    """A hash of everything that changes the annotations (not the ray/output settings)."""
    relevant = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("ray", "output")}
    # Calibration decides buckets from the finished output's ρ̄, not any row's annotation: a resume may
    # switch it (and fingerprints of runs from before it existed still match).
    relevant["cmab"] = {k: v for k, v in relevant["cmab"].items() if k != "calibration"}
    relevant["engine"] = {k: v for k, v in relevant["engine"].items() if k not in ("batch_size",)}
    if not cfg.rap.enabled:  # fingerprints of runs from before RAP existed still match
        relevant.pop("rap")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide the scores (absent ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def locate(path: str | Path | Location) -> tuple[Location, Location]:
    """``(shards, run directory)`` for a run directory or its ``annotated/``; a directory of shards
    from elsewhere is its own run directory (its ``run.json``, if any, lies beside the shards)."""
    path = location(path)
    if (path / ANNOTATED_DIR).is_dir():
        return path / ANNOTATED_DIR, path
    if path.name == ANNOTATED_DIR:
        return path, path.parent
    return path, path


def read(path: str | Path | Location) -> dict[str, Any]:
    """The run record of ``path`` (see :func:`locate`): its ``run.json``, else the record in the newest
    shard's Parquet metadata (shards copied without their run directory), else ``{}``."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    shards, run_dir = locate(path)
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        return json.loads(run_file.read_text())
    fs = shards.filesystem
    files = sorted(pads.dataset(shards.path, filesystem=fs, format="parquet").files) if shards.is_dir() else []
    raw = (pq.read_schema(files[-1], filesystem=fs).metadata or {}).get(RUN_METADATA_KEY) if files else None
    return json.loads(raw) if raw else {}


def begin(cfg: CurateConfig, out: Path | Location, shards: Path | Location) -> dict[str, Any]:
    """Check that ``shards`` (the annotated Parquet directory) may take this run's rows, write
    ``out/run.json`` and return the record. Existing shards are a resume: allowed only with
    ``output.resume`` and the same scoring fingerprint."""
    fingerprint = scoring_fingerprint(cfg)
    out, shards = location(out), location(shards)
    run_file = out / RUN_FILE
    if shards.has_children(".parquet"):
        if not cfg.output.resume:
            raise RuntimeError(f"{shards} already has shards and output.resume=false; use a new output.path")
        previous = json.loads(run_file.read_text()).get("fingerprint") if run_file.exists() else None
        if previous != fingerprint:
            raise RuntimeError(
                f"{out} was written with a different scoring config (fingerprint {previous} != {fingerprint}); "
                "resuming would mix annotations: use a new output.path"
            )
    versions = package_versions()
    record = {
        "fingerprint": fingerprint,
        "config": dataclasses.asdict(cfg),
        "versions": versions,
        "model": cfg.engine.model,
        "engine": cfg.engine.backend,
        "hardmode_version": versions.get("hardmode"),
    }
    if cfg.cmab.enabled:
        # What CMAB's ρ̄ and its thresholds depend on beyond the config's literal values.
        record["cmab"] = {"variant": cfg.cmab.variant, "image_position": cfg.cmab.prompt_layout(cfg.prompt)}
    out.mkdir()
    run_file.write_text(json.dumps(record, indent=2, default=str))
    return record


def finish(out: Path | Location, record: dict[str, Any], summary: dict[str, Any]) -> None:
    """Add the run's summary and end time to ``out/run.json``."""
    record["summary"] = summary
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    (location(out) / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))


def summarize(shards: Path | Location, total: int, seconds: float,
              record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rows in/out, scored, errored by reason, bucket counts, generations and throughput of the
    annotated dataset under ``shards``.

    With the run's ``record`` of a calibrated-CMAB run, the calibration over the whole output (a
    resumed run's earlier rows included) is computed now, stored in ``record["cmab"]["calibration"]``
    for :func:`finish` to write, and the CMAB bucket counts use it."""
    table = read_scores(shards)
    cmab = cmab_calibration.calibrated_config(record) if record is not None else None
    if cmab is not None:
        record.setdefault("cmab", {})["calibration"] = cmab_calibration.calibrate(table, cmab)
        table = cmab_calibration.apply(table, record["cmab"]["calibration"])
    rows = table.to_pylist()
    ok = [r for r in rows if r[schema.STATUS] == schema.STATUS_OK]
    errors: dict[str, int] = {}
    for r in rows:
        if r[schema.STATUS] != schema.STATUS_OK:
            reason = error_reason(r[schema.ERROR] or "")
            errors[reason] = errors.get(reason, 0) + 1
    summary: dict[str, Any] = {
        "rows_in": total,
        "rows_out": len(rows),
        "scored": len(ok),
        "errored": len(rows) - len(ok),
        "errors_by_reason": errors,
        "seconds": round(seconds, 1),
    }
    for spec in registry.SCORERS:
        if spec.bucket in table.column_names:
            counts = {b: sum(1 for r in ok if r[spec.bucket] == b) for b in schema.BUCKETS}
            summary[f"{spec.name}_buckets"] = counts
        for column in (spec.generations, spec.tokens):
            if column in table.column_names:
                summary[column] = sum(r[column] or 0 for r in ok)
    summary["rows_per_s"] = round(len(rows) / max(seconds, 1e-9), 3)
    return summary
