"""The judge model: majority votes over differently worded judgements."""

import re

from repair.judge import Judge, _majority

QUESTION = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in total?"
REFERENCE = ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips.", "The answer is: 72"]


def test_majority_vote():
    assert _majority([2, 1, 2]) == 2
    assert _majority(["method", "execution"]) == "method"  # a tie goes to the first choice
    assert _majority([0]) == 0


def test_judge_settles_with_votes(tiny_model, tokenizer):
    judge = Judge(tiny_model, tokenizer, votes=3, name="tiny")
    steps = ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48*24 = 1152 clips."]
    fault = judge.settle(QUESTION, steps, "1152", REFERENCE)
    assert fault is not None
    assert 0 <= fault.step_index <= 2
    assert fault.step == (steps + ["The answer is: 1152"])[fault.step_index]
    assert fault.error_type in ("execution", "conceptual", "method", "reasoning")
    step_votes = re.search(r"step votes \[([^\]]*)\]", fault.detail).group(1).split(", ")
    type_votes = re.search(r"type votes \[([^\]]*)\]", fault.detail).group(1).split(", ")
    assert len(step_votes) == 3
    assert len(type_votes) == 3


def test_judge_empty_solution(tiny_model, tokenizer):
    assert Judge(tiny_model, tokenizer).settle(QUESTION, [], None, REFERENCE) is None
