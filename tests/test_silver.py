"""Choosing the steps of the Silver Bullet set, and the hygiene checks on its records."""

import math

from repair.locate import Frontier
from repair.silver import build_records, preference_records, select_targets
from repair.steps import Problem

PROBLEMS = [Problem(id=f"p{i}", question=f"Question {i}: what is {i} + {i}?", steps=(f"{i} + {i} = {2 * i}", "Done."),
                    answer=str(2 * i)) for i in range(6)]


def _frontier(pid, step, rejected="wrong"):
    problem = next(p for p in PROBLEMS if p.id == pid)
    return Frontier(problem_id=pid, step_index=step, flip_token="x", fp_margin=1.0, q_margin=-1.0, flips=1,
                    chosen=(list(problem.steps) + [problem.answer])[step], rejected=rejected, error_type="execution")


def test_frontier_selection_earliest_first():
    frontiers = [_frontier("p0", 2), _frontier("p1", 0), _frontier("p2", 1), _frontier("p3", 0)]
    targets = select_targets(PROBLEMS, frontiers, "frontier", budget=3, seed=0)
    assert [(t.problem_id, t.step_index) for t in targets] == [("p1", 0), ("p3", 0), ("p2", 1)]


def test_random_selection_seeded_from_pool():
    first = select_targets(PROBLEMS, [], "random", budget=5, seed=1)
    again = select_targets(PROBLEMS, [], "random", budget=5, seed=1)
    other = select_targets(PROBLEMS, [], "random", budget=5, seed=2)
    keys = [(t.problem_id, t.step_index) for t in first]
    assert keys == [(t.problem_id, t.step_index) for t in again]
    assert keys != [(t.problem_id, t.step_index) for t in other]
    assert len(set(keys)) == 5
    assert all(math.isnan(t.fp_margin) and t.rejected == "" for t in first)
    for target in first:
        problem = next(p for p in PROBLEMS if p.id == target.problem_id)
        assert target.chosen == (list(problem.steps) + [problem.answer])[target.step_index]


def test_all_selection_takes_steps_in_order():
    targets = select_targets(PROBLEMS, [], "all", budget=4, seed=0)
    assert [(t.problem_id, t.step_index) for t in targets] == [("p0", 0), ("p0", 1), ("p0", 2), ("p1", 0)]


def test_hygiene_drops_and_counts(tokenizer):
    targets = [_frontier("p0", 0), _frontier("p0", 0), _frontier("p1", 0), _frontier("p2", 0)]
    targets[3].chosen = "  "
    records, summary = build_records(tokenizer, PROBLEMS, targets, budget=10, held_out_ids={"p1"})
    assert [r.problem_id for r in records] == ["p0"]
    assert summary["dropped"] == {"duplicate": 1, "held-out problem": 1, "step could not be parsed": 1}
    assert summary["records"] == 1
    assert records[0].prompt.endswith("Step 1:")


def test_budget_caps_records(tokenizer):
    targets = [_frontier(f"p{i}", 0) for i in range(5)]
    records, summary = build_records(tokenizer, PROBLEMS, targets, budget=2)
    assert len(records) == 2
    assert summary["dropped"] == {"over budget": 3}


def test_preference_records_need_distinct_rejected(tokenizer):
    targets = [_frontier("p0", 0, rejected="0 + 0 = 1"), _frontier("p1", 0, rejected="1 + 1 = 2"),
               _frontier("p2", 0, rejected="")]
    records, summary = build_records(tokenizer, PROBLEMS, targets, budget=10)
    assert [r.problem_id for r in preference_records(records)] == ["p0"]
    assert summary["notes"] == {"rejected step equals chosen (kept for sft, left out of dpo)": 1}
