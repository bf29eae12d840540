"""Flips, frontiers, rejected steps and the verification figures."""

import pytest

from repair.locate import Frontier, find_flips, generate_rejected, locate_frontiers, summarize_frontiers
from repair.measure import TraceScore
from repair.steps import Problem
from repair.verify import compare, flip_changes, gap_closed


def _score(margins, decision=None, steps=None, pid="p"):
    n = len(margins)
    return TraceScore(problem_id=pid, token_ids=[16] * n, token_step=steps or [0] * n,
                      decision=decision or [True] * n, logprob=[-1.0] * n, margin=list(margins))


def test_flips_need_decision_and_sign_change():
    fp = _score([1.0, 2.0, -1.0, 3.0], decision=[True, False, True, True])
    q = _score([-0.5, -0.5, -2.0, 0.5])
    assert find_flips(fp, q) == [0]


def test_frontier_is_first_flipped_step(tokenizer):
    problem = Problem(id="p", question="q", steps=("a", "b"), answer="3")
    fp = _score([1.0, 1.0, 1.0, 1.0], steps=[0, 1, 1, 2])
    q = _score([1.0, 1.0, -1.0, -1.0], steps=[0, 1, 1, 2])
    frontiers = locate_frontiers(tokenizer, [problem], [fp], [q])
    assert len(frontiers) == 1
    assert frontiers[0].step_index == 1
    assert frontiers[0].chosen == "b"
    assert frontiers[0].flips == 2
    summary = summarize_frontiers(1, frontiers)
    assert summary["frontier_histogram"] == {"2": 1}


def test_no_flip_no_frontier(tokenizer):
    problem = Problem(id="p", question="q", steps=("a",), answer="3")
    assert locate_frontiers(tokenizer, [problem], [_score([1.0])], [_score([0.5])]) == []


def test_rejected_step_generated(tiny_model, tokenizer):
    problem = Problem(id="p", question="Tom has 3 apples and buys 4 more. How many?", steps=("3 + 4 = 7",), answer="7")
    frontier = Frontier(problem_id="p", step_index=0, flip_token="7", fp_margin=1.0, q_margin=-1.0, flips=1, chosen="3 + 4 = 7")
    generate_rejected(tiny_model, tokenizer, {"p": problem}, [frontier], max_new_tokens=8)
    assert frontier.rejected  # a random model writes something, and only one line of it
    assert "\n" not in frontier.rejected
    assert frontier.error_type in {"execution", "method", "conceptual", "reasoning"}


@pytest.mark.parametrize(("fp", "q", "r", "expected"), [(1.0, 2.0, 1.5, 0.5), (1.0, 2.0, 2.5, -0.5), (1.0, 1.0, 0.9, None)])
def test_gap_closed(fp, q, r, expected):
    assert gap_closed(fp, q, r) == expected


def test_flip_changes_counts():
    fp = [_score([1.0, 1.0, 1.0])]
    q = [_score([-1.0, -1.0, 1.0])]
    r = [_score([1.0, -1.0, -1.0])]
    changes = flip_changes(fp, q, r)
    assert changes["quantized_flips"] == 2
    assert changes["repaired_flips"] == 2
    assert changes["flips_restored"] == 1
    assert changes["flips_caused"] == 1


def test_compare_reports_models_and_gap():
    fp = [TraceScore("p", [1, 2], [0, 0], [True, True], [-1.0, -1.0], [1.0, 1.0])]
    q = [TraceScore("p", [1, 2], [0, 0], [True, True], [-3.0, -3.0], [-1.0, 1.0])]
    r = [TraceScore("p", [1, 2], [0, 0], [True, True], [-2.0, -2.0], [1.0, 1.0])]
    result = compare(fp, q, r)
    assert result["models"]["quantized"]["nll"] == 3.0
    assert result["gap_closed"] == 0.5
    assert result["flips"]["flips_restored"] == 1
