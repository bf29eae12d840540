"""Compare the reference, quantized and repaired models on held-out problems."""

from __future__ import annotations

import logging

from repair.locate import find_flips
from repair.measure import TraceScore, summarize

log = logging.getLogger(__name__)


def flip_changes(fp: list[TraceScore], q: list[TraceScore], r: list[TraceScore]) -> dict:
    """Count flips of the quantized model that the repair restored, and new flips it caused."""
    q_flips = r_flips = restored = caused = 0
    q_frontiers = r_frontiers = 0
    for fp_score, q_score, r_score in zip(fp, q, r):
        q_set = set(find_flips(fp_score, q_score))
        r_set = set(find_flips(fp_score, r_score))
        q_flips += len(q_set)
        r_flips += len(r_set)
        restored += len(q_set - r_set)
        caused += len(r_set - q_set)
        q_frontiers += bool(q_set)
        r_frontiers += bool(r_set)
    return {
        "quantized_flips": q_flips,
        "repaired_flips": r_flips,
        "flips_restored": restored,
        "flips_caused": caused,
        "quantized_problems_with_frontier": q_frontiers,
        "repaired_problems_with_frontier": r_frontiers,
    }


def gap_closed(fp_nll: float, q_nll: float, r_nll: float) -> float | None:
    """Return the share of the quantized-to-reference NLL gap that the repair closed (1.0 = all of it)."""
    gap = q_nll - fp_nll
    if gap <= 0:
        return None
    return round((q_nll - r_nll) / gap, 4)


def compare(fp: list[TraceScore], q: list[TraceScore], r: list[TraceScore]) -> dict:
    """Return the verification figures for ``verify.json``."""
    models = {"reference": summarize(fp), "quantized": summarize(q), "repaired": summarize(r)}
    return {
        "models": models,
        "flips": flip_changes(fp, q, r),
        "gap_closed": gap_closed(models["reference"]["nll"], models["quantized"]["nll"], models["repaired"]["nll"]),
    }
