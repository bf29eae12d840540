"""Step format, answer parsing, decision tokens and the error-type rules."""

import pytest

from repair.locate import classify_error, safe_eval
from repair.steps import (
    encode_trace,
    format_solution,
    is_decision_token,
    normalize_number,
    parse_step_line,
    question_words,
    split_gsm8k_solution,
)


def test_gsm8k_solution_split():
    parsed = split_gsm8k_solution("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72")
    assert parsed is not None
    steps, answer = parsed
    assert steps == ("Natalia sold 48/2 = 24 clips in May.", "She sold 48+24 = 72 clips.")
    assert answer == "72"


@pytest.mark.parametrize("text", ["no answer line here", "#### ", "####\n"])
def test_gsm8k_solution_without_answer(text):
    assert split_gsm8k_solution(text) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1,000", "1000"), ("$18", "18"), ("-3", "-3"), ("2.50", "2.5"), ("14.0", "14"), ("abc", "abc")],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


def test_format_solution_lines():
    assert format_solution(["a", "b"], "7") == "Step 1: a\nStep 2: b\nThe answer is: 7"


def test_parse_step_line():
    assert parse_step_line("  Step 3:  48 + 24 = 72") == "48 + 24 = 72"


def test_encode_trace_step_spans(tokenizer):
    trace = encode_trace(tokenizer, "What is 2 + 3?", ["2 + 3 = 5"], "5")
    assert trace.token_step[:trace.prompt_length] == [-1] * trace.prompt_length
    start, end = trace.step_span(0)
    assert tokenizer.decode(trace.input_ids[start:end]).strip() == "2 + 3 = 5"
    start, end = trace.step_span(1)
    assert tokenizer.decode(trace.input_ids[start:end]).strip() == "5"
    header = [i for i, flag in enumerate(trace.token_header) if flag]
    assert tokenizer.decode([trace.input_ids[i] for i in header]).replace(" ", "") == "Step1:Theansweris:"


def test_encode_trace_close_last_adds_newline_and_eos(tokenizer):
    step = encode_trace(tokenizer, "q", ["a step"], None, close_last=True)
    assert tokenizer.decode(step.input_ids[slice(*step.step_span(0))]).endswith("\n")
    answer = encode_trace(tokenizer, "q", [], "5", close_last=True)
    assert answer.input_ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize(
    ("token", "expected"),
    [(" 48", True), ("+", True), (" =", True), (" clips", True), (" the", False), ("\n", False), (" sold", False)],
)
def test_decision_tokens(token, expected):
    assert is_decision_token(token, question_words("How many clips did she sell?")) is expected


@pytest.mark.parametrize(
    ("expression", "value"),
    [("48/2", 24.0), ("3 x 4", 12.0), ("$1,000 + 5", 1005.0), ("(2+3)*4", 20.0), ("2 ** 10", None), ("__import__('os')", None)],
)
def test_safe_eval(expression, value):
    assert safe_eval(expression) == value


@pytest.mark.parametrize(
    ("rejected", "expected"),
    [
        ("She sold 48/2 = 25 clips in May.", "execution"),
        ("She sold 48*2 = 96 clips in May.", "method"),
        ("She sold 48/6 = 8 clips in May.", "conceptual"),
        ("She sold half as many clips in May.", "reasoning"),
    ],
)
def test_error_type_rules(rejected, expected):
    question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    assert classify_error(question, [], "She sold 48/2 = 24 clips in May.", rejected) == expected
