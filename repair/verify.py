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


def frontier_margins(fp: list[TraceScore], q: list[TraceScore], r: list[TraceScore]) -> dict:
    """Return the mean margin of each model on the quantized model's first flipped token of each problem.

    A positive margin means the model ranks the reference token first. The repair aims to turn
    the quantized model's negative margins there positive again.
    """
    rows = []
    for fp_score, q_score, r_score in zip(fp, q, r):
        flips = find_flips(fp_score, q_score)
        if flips:
            first = flips[0]
            rows.append((fp_score.margin[first], q_score.margin[first], r_score.margin[first]))
    if not rows:
        return {"frontiers": 0}
    return {
        "frontiers": len(rows),
        "reference_mean": round(sum(row[0] for row in rows) / len(rows), 4),
        "quantized_mean": round(sum(row[1] for row in rows) / len(rows), 4),
        "repaired_mean": round(sum(row[2] for row in rows) / len(rows), 4),
        "repaired_positive": sum(row[2] > 0 for row in rows),
    }


def compare(fp: list[TraceScore], q: list[TraceScore], r: list[TraceScore],
            control: list[TraceScore] | None = None) -> dict:
    """Return the verification figures for ``verify.json``.

    ``control`` contains the scores of the full-precision model with an adapter trained on the same
    records. Its NLL drop from the reference is what the same data gives a model with nothing
    to repair (domain adaptation), to be set beside the repaired model's drop from the quantized one.
    """
    models = {"reference": summarize(fp), "quantized": summarize(q), "repaired": summarize(r)}
    result = {
        "models": models,
        "flips": flip_changes(fp, q, r),
        "frontier_margins": frontier_margins(fp, q, r),
        "gap_closed": gap_closed(models["reference"]["nll"], models["quantized"]["nll"], models["repaired"]["nll"]),
    }
    if control is not None:
        models["control"] = summarize(control)
        result["nll_drop"] = {
            "repair": round(models["quantized"]["nll"] - models["repaired"]["nll"], 4),
            "control": round(models["reference"]["nll"] - models["control"]["nll"], 4),
        }
    return result
