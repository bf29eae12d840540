"""Silver Bullet records: the correct prefix, the correct frontier step and the quantized model's own step."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from repair.config import Selection
from repair.locate import Frontier
from repair.steps import Problem, build_prompt, format_solution, step_header

log = logging.getLogger(__name__)

DATA_FILE = "data/train-00000-of-00001.parquet"


@dataclass
class SilverRecord:
    """One training record aimed at one step of a problem, by default its first faulty step."""

    problem_id: str
    question: str
    prompt: str  # chat-formatted prompt, the correct prefix and the step's header
    prefix: list[str]  # reference steps before the target step
    chosen: str  # the reference step
    rejected: str  # the quantized model's own step from the same prefix ("" when not generated)
    step_index: int  # 0-based; the answer line is the last step
    is_answer: bool  # the step is the final answer line
    error_type: str
    flip_token: str
    fp_margin: float
    q_margin: float
    source: str = "frontier"  # the --selection that picked the step: frontier, random or all


def select_targets(problems: list[Problem], frontiers: list[Frontier], selection: Selection, budget: int,
                   seed: int) -> list[Frontier]:
    """Return up to ``budget`` target steps of the training problems, in training order.

    frontier: first faulty steps, earliest steps first. random: steps drawn uniformly from every
    step of every problem that was scored, the baseline that shows whether aiming at the frontier
    matters. all: every step of the problems in pool order. Targets that are not frontiers have no
    flip, so their margins are NaN and their error type is empty.
    """
    if selection == "frontier":
        order = {p.id: i for i, p in enumerate(problems)}
        return sorted(frontiers, key=lambda f: (f.step_index, order[f.problem_id]))[:budget]

    steps = [(problem, index) for problem in problems for index in range(len(problem.steps) + 1)]
    if selection == "random":
        rng = random.Random(seed)
        steps = rng.sample(steps, min(budget, len(steps)))
    else:
        steps = steps[:budget]
    return [Frontier(problem_id=problem.id, step_index=index, flip_token="", fp_margin=math.nan, q_margin=math.nan,
                     flips=0, chosen=(list(problem.steps) + [problem.answer])[index])
            for problem, index in steps]


def build_records(tokenizer, problems: list[Problem], targets: list[Frontier], budget: int, selection: Selection = "frontier",
                  held_out_ids: frozenset[str] | set[str] = frozenset()) -> tuple[list[SilverRecord], dict]:
    """Turn selected target steps into records, dropping and counting the ones unfit for training.

    Dropped: steps of held-out problems, steps that could not be parsed (empty text), and
    duplicates (the same prompt and chosen step twice).
    """
    by_id = {p.id: p for p in problems}
    dropped: Counter = Counter()
    notes: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    records = []
    for target in targets:
        if len(records) >= budget:
            dropped["over budget"] += 1
            continue
        if target.problem_id in held_out_ids:
            dropped["held-out problem"] += 1
            continue
        if not target.chosen.strip():
            dropped["step could not be parsed"] += 1
            continue
        problem = by_id[target.problem_id]
        prefix = list(problem.steps[:target.step_index])
        is_answer = target.step_index == len(problem.steps)
        header = "The answer is:" if is_answer else step_header(target.step_index).rstrip(" ")
        prompt = build_prompt(tokenizer, problem.question)
        if prefix:
            prompt += format_solution(prefix, "").rsplit("\n", 1)[0] + "\n"
        key = (prompt + header, target.chosen.strip())
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        records.append(SilverRecord(
            problem_id=problem.id, question=problem.question, prompt=prompt + header, prefix=prefix,
            chosen=target.chosen, rejected=target.rejected, step_index=target.step_index,
            is_answer=is_answer, error_type=target.error_type, flip_token=target.flip_token,
            fp_margin=target.fp_margin, q_margin=target.q_margin, source=selection,
        ))
        if target.rejected.strip() and target.rejected.strip() == target.chosen.strip():
            notes["rejected step equals chosen (kept for sft, left out of dpo)"] += 1
    summary = {
        "records": len(records),
        "selection": selection,
        "targets_selected": len(targets),
        "budget": budget,
        "dropped": dict(dropped),
        "notes": dict(notes),
        "step_histogram": dict(sorted(Counter(str(r.step_index + 1) for r in records).items(), key=lambda kv: int(kv[0]))),
        "error_types": dict(Counter(r.error_type for r in records if r.error_type)),
    }
    return records, summary


def preference_records(records: list[SilverRecord]) -> list[SilverRecord]:
    """Return the records usable for DPO: a rejected step that exists and differs from the chosen one."""
    return [r for r in records if r.rejected.strip() and r.rejected.strip() != r.chosen.strip()]


def save_records(records: list[SilverRecord], folder: Path, summary: dict) -> None:
    """Write the records as one parquet file (the layout the Hub's dataset viewer reads) and a summary."""
    from datasets import Dataset

    (folder / DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list([asdict(r) for r in records]).to_parquet(str(folder / DATA_FILE))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def load_records(folder: Path) -> list[SilverRecord]:
    import pyarrow.parquet as pq

    return [SilverRecord(**row) for row in pq.read_table(folder / DATA_FILE).to_pylist()]
