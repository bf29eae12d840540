"""Silver Bullet records: the correct prefix, the correct frontier step and the quantized model's own step."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from repair.locate import Frontier
from repair.steps import Problem, build_prompt, format_solution, step_header

log = logging.getLogger(__name__)

DATA_FILE = "data/train-00000-of-00001.parquet"


@dataclass
class SilverRecord:
    """One training record aimed at a problem's first faulty step."""

    problem_id: str
    question: str
    prompt: str  # chat-formatted prompt, the correct prefix and the frontier step's header
    prefix: list[str]  # reference steps before the frontier
    chosen: str  # the reference frontier step
    rejected: str  # the quantized model's own frontier step
    step_index: int  # 0-based; the answer line is the last step
    is_answer: bool  # the frontier is the final answer line
    error_type: str
    flip_token: str
    fp_margin: float
    q_margin: float


def build_records(tokenizer, problems: list[Problem], frontiers: list[Frontier], budget: int) -> tuple[list[SilverRecord], dict]:
    """Select up to ``budget`` frontiers, earliest steps first, and turn them into records."""
    by_id = {p.id: p for p in problems}
    order = {p.id: i for i, p in enumerate(problems)}
    ranked = sorted(frontiers, key=lambda f: (f.step_index, order[f.problem_id]))
    counts: Counter = Counter()
    records = []
    for frontier in ranked:
        if len(records) >= budget:
            counts["over budget"] += 1
            continue
        if not frontier.chosen.strip():
            counts["empty reference step"] += 1
            continue
        problem = by_id[frontier.problem_id]
        prefix = list(problem.steps[:frontier.step_index])
        is_answer = frontier.step_index == len(problem.steps)
        header = "The answer is:" if is_answer else step_header(frontier.step_index).rstrip(" ")
        prompt = build_prompt(tokenizer, problem.question)
        if prefix:
            prompt += format_solution(prefix, "").rsplit("\n", 1)[0] + "\n"
        records.append(SilverRecord(
            problem_id=problem.id, question=problem.question, prompt=prompt + header, prefix=prefix,
            chosen=frontier.chosen, rejected=frontier.rejected, step_index=frontier.step_index,
            is_answer=is_answer, error_type=frontier.error_type, flip_token=frontier.flip_token,
            fp_margin=frontier.fp_margin, q_margin=frontier.q_margin,
        ))
        if frontier.rejected.strip() == frontier.chosen.strip():
            counts["rejected step equals chosen (kept)"] += 1
    summary = {
        "records": len(records),
        "frontiers_available": len(frontiers),
        "budget": budget,
        "notes": dict(counts),
        "step_histogram": dict(sorted(Counter(str(r.step_index + 1) for r in records).items(), key=lambda kv: int(kv[0]))),
        "error_types": dict(Counter(r.error_type for r in records)),
    }
    return records, summary


def save_records(records: list[SilverRecord], folder: Path, summary: dict) -> None:
    """Write the records as one parquet file (the layout the Hub's dataset viewer reads) and a summary."""
    from datasets import Dataset

    (folder / DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list([asdict(r) for r in records]).to_parquet(str(folder / DATA_FILE))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def load_records(folder: Path) -> list[SilverRecord]:
    import pyarrow.parquet as pq

    return [SilverRecord(**row) for row in pq.read_table(folder / DATA_FILE).to_pylist()]
