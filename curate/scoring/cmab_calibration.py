"""CMAB's bucket thresholds: the published fixed bands, or bands calibrated on a run's own ρ̄.

Why calibrate: ρ̄'s scale belongs to the model (its layer, image-token count, attention habits). The
published bands (hard 0.4 ≤ ρ̄ ≤ 1.6, medium down to 0.1 / up to 1.9) were fitted to Qwen2.5-VL-7B; on
another model nearly every sample can land in one bucket (the toy demo put 76-102 of 120 there).
``cmab.calibration.mode=calibrated`` puts the four cut points at quantiles of the run's own ρ̄ over the
rows CMAB answered correctly (status ok, a finite ``cmab_rho``; unsolved rows have none).

When: a scoring actor sees one batch, never the run's distribution, so every row is still written
with the fixed bands' ``cmab_bucket``. When ``curate run`` / ``curate score`` end (a resume included),
:func:`calibrate` runs over the whole annotated output and its result goes into ``run.json`` under
``cmab.calibration``; the run summary, ``curate report`` and ``curate select`` (its rules, counts and
exported rows) then recompute the bucket from ``cmab_rho`` with :func:`apply`. Unsolved stays
unsolved. Too few values (``min_values``) fall back to the fixed bands, with the warning recorded.

Torch-free on purpose: report and select import it without loading a model stack
(``curate.scoring.cmab`` re-exports :func:`cmab_bucket`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from curate import schema
from curate.config import CmabThresholds

__all__ = [
    "THRESHOLD_NAMES", "apply", "calibrate", "calibrated_config", "cmab_bucket", "of_run", "quantile_thresholds",
    "rho_values",
]

log = logging.getLogger(__name__)

# The cut points, low to high, in the order cmab.calibration.quantiles gives their levels.
THRESHOLD_NAMES = ("easy_low", "hard_low", "hard_high", "easy_high")
_SOLVED = ("easy", "medium", "hard")


def cmab_bucket(rho: Optional[float], correct: bool, thresholds: CmabThresholds) -> str:
    """easy | medium | hard | unsolved: hard in [hard_low, hard_high], medium within
    [easy_low, easy_high] around it, easy outside; unsolved when no response was correct."""
    if not correct:
        return "unsolved"
    if rho is None or math.isnan(rho):
        raise ValueError("a correctly answered sample needs a ρ̄ to be bucketed")
    t = thresholds
    if t.hard_low <= rho <= t.hard_high:
        return "hard"
    if t.easy_low <= rho < t.hard_low or t.hard_high < rho <= t.easy_high:
        return "medium"
    return "easy"


def quantile_thresholds(values: Sequence[float], levels: Sequence[float]) -> CmabThresholds:
    """The four cut points at ``levels`` (numpy's default linear interpolation between order
    statistics) of ``values``."""
    cuts = np.quantile(np.asarray(values, dtype=np.float64), np.asarray(levels, dtype=np.float64))
    return CmabThresholds(**{name: float(x) for name, x in zip(THRESHOLD_NAMES, cuts)})


def _solved(bucket: Any, rho: Any) -> bool:
    return bucket in _SOLVED and rho is not None and math.isfinite(rho)


def rho_values(table: pa.Table) -> list[float]:
    """ρ̄ of the rows CMAB answered correctly: status ok, a solved bucket and a finite ``cmab_rho``."""
    if "cmab_rho" not in table.column_names or "cmab_bucket" not in table.column_names:
        return []
    status = table.column(schema.STATUS).to_pylist()
    return [float(rho) for s, bucket, rho in zip(status, table.column("cmab_bucket").to_pylist(),
                                                 table.column("cmab_rho").to_pylist())
            if s == schema.STATUS_OK and _solved(bucket, rho)]


def calibrate(table: pa.Table, cmab: Mapping[str, Any]) -> dict[str, Any]:
    """The calibration record of a run (``run.json``'s ``cmab.calibration``) from its annotated score
    columns and its config's ``cmab`` section (a dict, as run records hold it).

    ``mode`` is what consumers apply: ``calibrated`` (``thresholds`` from the quantiles), or ``fixed``
    when there were fewer than ``min_values`` ρ̄ values (``warning`` says so)."""
    settings = cmab.get("calibration") or {}
    variant = cmab.get("variant", "code")
    fixed = dict(cmab["thresholds"][variant])
    levels = [float(q) for q in settings["quantiles"]]
    minimum = int(settings["min_values"])
    values = rho_values(table)
    record: dict[str, Any] = {"mode": "calibrated", "variant": variant, "levels": levels, "values": len(values)}
    if len(values) < minimum:
        warning = (f"only {len(values)} ρ̄ values (cmab.calibration.min_values={minimum}): "
                   f"the fixed cmab.thresholds.{variant} apply")
        log.warning("CMAB calibration: %s", warning)
        return {**record, "mode": "fixed", "requested": "calibrated", "min_values": minimum, "warning": warning,
                "thresholds": fixed, "fixed_thresholds": fixed}
    cuts = quantile_thresholds(values, levels)
    thresholds = {name: getattr(cuts, name) for name in THRESHOLD_NAMES}
    log.info("CMAB calibration: quantiles %s of %d ρ̄ values → %s (fixed: %s)", levels, len(values),
             {k: round(v, 4) for k, v in thresholds.items()}, fixed)
    return {**record, "thresholds": thresholds, "fixed_thresholds": fixed}


def calibrated_config(record: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The run config's ``cmab`` section when CMAB ran in calibrated mode, else None."""
    cmab = (record.get("config") or {}).get("cmab") or {}
    mode = (cmab.get("calibration") or {}).get("mode", "fixed")
    return cmab if cmab.get("enabled") and mode == "calibrated" else None


def of_run(record: Mapping[str, Any],
           table: Union[pa.Table, Callable[[], pa.Table], None] = None) -> Optional[dict[str, Any]]:
    """The calibration a run's consumers apply (see :func:`apply`), or None for a fixed-mode run.

    The recorded one when ``run.json`` has it; for a calibrated run without one (still running, killed
    before its end, or shards whose ``run.json`` was left behind: their Parquet metadata is written at
    the start) it is computed from ``table`` (the annotated score columns, or a function reading them),
    with a warning."""
    recorded = (record.get("cmab") or {}).get("calibration")
    if recorded is not None:
        return dict(recorded)
    cmab = calibrated_config(record)
    if cmab is None or table is None:
        return None
    log.warning("the run is in calibrated CMAB mode but its record holds no calibration (unfinished, or "
                "run.json missing): calibrating on the ρ̄ of the shards at hand")
    return calibrate(table() if callable(table) else table, cmab)


def apply(table: pa.Table, calibration: Optional[Mapping[str, Any]]) -> pa.Table:
    """``table`` with ``cmab_bucket`` recomputed from ``cmab_rho`` by the calibrated thresholds
    (unsolved and error rows keep theirs); unchanged without a calibration in ``calibrated`` mode."""
    if (not calibration or calibration.get("mode") != "calibrated"
            or "cmab_bucket" not in table.column_names or "cmab_rho" not in table.column_names):
        return table
    thresholds = CmabThresholds(**{name: float(calibration["thresholds"][name]) for name in THRESHOLD_NAMES})
    buckets = [cmab_bucket(rho, True, thresholds) if _solved(bucket, rho) else bucket
               for bucket, rho in zip(table.column("cmab_bucket").to_pylist(), table.column("cmab_rho").to_pylist())]
    index = table.column_names.index("cmab_bucket")
    field = table.schema.field(index)
    return table.set_column(index, field, pa.array(buckets, type=field.type))
