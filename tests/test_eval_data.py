"""Evaluation sets for the generated diagnosis: GSM8K, MATH-500, AIME, MAWPS and named columns."""

import pytest
from model_fixtures import DATA_ROOT, write_jsonl

from repair.data import load_eval_split, parse_eval_row, split_solution_text
from repair.errors import DatasetError


def _data(name):
    path = DATA_ROOT / name
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path}; set REPAIR_TEST_DATA")
    return str(path)


def test_gsm8k_eval_rows_keep_steps():
    loaded = load_eval_split(_data("gsm8k"), limit=2)
    assert len(loaded.problems) == 2
    assert loaded.problems[0].answer == "18"
    assert loaded.problems[0].steps[0] == "Janet sells 16 - 3 - 4 = 9 duck eggs a day."


def test_math500_latex_answer_and_steps():
    problem = load_eval_split(_data("math500"), limit=1).problems[0]
    assert problem.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert problem.steps[-1].startswith("Therefore, the polar coordinates are")
    assert not any("[asy]" in step for step in problem.steps)


def test_aime_integer_answers():
    problems = load_eval_split(_data("aime24")).problems
    assert len(problems) == 30
    assert problems[0].answer == "204"


def test_mawps_folder_reads_every_file():
    folder = _data("mawps")
    rows = sum(len(path.read_text().splitlines()) for path in (DATA_ROOT / "mawps").glob("*.jsonl"))
    loaded = load_eval_split(folder)
    assert rows > 2000
    assert len(loaded.problems) + loaded.dropped["duplicate question"] == rows
    assert loaded.problems[0].answer == "43"
    assert loaded.problems[0].steps == ()


def test_named_columns(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [{"q": "What is 2 + 2?", "final": "4.0"}, {"q": "No answer", "final": ""}])
    loaded = load_eval_split(str(path), question_field="q", answer_field="final")
    assert [p.answer for p in loaded.problems] == ["4"]
    assert loaded.dropped["no answer"] == 1


def test_wrong_column_names_rejected(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [{"q": "What is 2 + 2?", "final": "4"}])
    with pytest.raises(DatasetError, match="--question-field"):
        load_eval_split(str(path))


def test_parse_row_reasons():
    assert parse_eval_row({"answer": "3"}) == "no question field"
    assert parse_eval_row({"question": "x", "answer": None}) == "no answer"


def test_split_solution_text_sentences():
    steps = split_solution_text("First add. Then multiply by $2$.\n\n[asy]draw((0,0));[/asy]\nSo $\\boxed{4}$.")
    assert steps == ("First add.", "Then multiply by $2$.", "So $\\boxed{4}$.")


@pytest.mark.parametrize("name, message", [
    ("./missing/gsm8k", "neither a local file or folder nor a valid Hub dataset id"),
    ("org/../name", "neither a local file or folder nor a valid Hub dataset id"),
    ("gsm8k-typo", "not found"),
])
def test_bad_dataset_names_rejected(name, message):
    with pytest.raises(DatasetError, match=message):
        load_eval_split(name)
