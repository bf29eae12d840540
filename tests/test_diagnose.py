"""Generated diagnosis end to end on the tiny model, references, summaries and the offline report."""

import json
import re

import pytest
from click.testing import CliRunner

from cli import cli
from repair.diagnose import DiagnoseConfig, ProblemDiagnosis, choose_reference, solution_lengths, summarize
from repair.errors import ConfigError
from repair.generate import Generation
from repair.report import bar_chart, build_figures, render_report
from repair.steps import Problem

PROBLEM = Problem("p1", "What is 2 + 3?", ("2 + 3 = 5",), "5")


@pytest.fixture(scope="module")
def diagnosed(tiny_model_dir, small_gsm8k, tmp_path_factory):
    folder = tmp_path_factory.mktemp("diagnose")
    args = ["diagnose", str(tiny_model_dir), "--bits", "2", "--no-pull", "--dataset", str(small_gsm8k),
            "--calibration-samples", "4", "--calibration-length", "64", "--train-problems", "12",
            "--test-problems", "6", "--budget", "8", "--limit", "6", "--max-new-tokens", "24",
            "--generation-batch-size", "3", "--judge", str(tiny_model_dir), "--judges", "3",
            "--run-dir", str(folder / "run"), "--output", str(folder / "out")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "out", result


def test_diagnose_writes_outputs(diagnosed):
    output, result = diagnosed
    diagnosis = json.loads((output / "diagnosis.json").read_text())
    assert diagnosis["problems_solved"] == 6
    assert len(diagnosis["problems"]) == 6
    assert set(diagnosis["accuracy"]) == {"fp", "q"}
    assert set(diagnosis["accuracy"]["q"]) == {"strict", "flexible"}
    assert "report:" in result.stdout
    assert (output / "generations-fp.json").is_file()
    assert (output / "generations-q.json").is_file()


def test_diagnose_places_every_wrong_solution(diagnosed):
    output, _ = diagnosed
    diagnosis = json.loads((output / "diagnosis.json").read_text())
    # Every wrong quantized solution with a reference gets a faulty step, from the rules or the judge.
    wrong = [p for p in diagnosis["problems"] if not p["q_correct"]["flexible"] and p["reference"]]
    assert wrong
    for problem in wrong:
        assert problem["fault"] is not None
        assert problem["fault_by"] in ("rules", "judge")
        assert problem["fault"]["error_type"] in ("execution", "conceptual", "method", "reasoning")
    judged = [p for p in wrong if p["fault_by"] == "judge"]
    for problem in judged:
        assert "step votes" in problem["fault"]["detail"]
    assert sum(diagnosis["error_types"].values()) == len(wrong)
    assert diagnosis["faults_found"]["rules"] + diagnosis["faults_found"]["judge"] == len(wrong)


def test_report_is_self_contained(diagnosed):
    output, _ = diagnosed
    html = (output / "report.html").read_text()
    assert html.count("<svg") >= 4
    assert "First faulty step" in html
    assert not re.search(r"""(src|href)=["']?https?:""", html)
    assert "<script" not in html


def test_rerun_reuses_generations(diagnosed, tiny_model_dir, small_gsm8k, monkeypatch):
    import repair.diagnose

    output, _ = diagnosed
    monkeypatch.setattr(repair.diagnose, "generate_solutions", lambda *a, **k: pytest.fail("generated again"))
    run_dir = output.parent / "run"
    args = ["diagnose", str(tiny_model_dir), "--bits", "2", "--no-pull", "--dataset", str(small_gsm8k),
            "--calibration-samples", "4", "--calibration-length", "64", "--train-problems", "12",
            "--test-problems", "6", "--budget", "8", "--limit", "6", "--max-new-tokens", "24",
            "--generation-batch-size", "3", "--run-dir", str(run_dir), "--output", str(output)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("mode", "fp_correct", "expected"),
    [("auto", True, "fp"), ("auto", False, "gold"), ("fp", True, "fp"), ("fp", False, None), ("gold", True, "gold")],
)
def test_choose_reference(mode, fp_correct, expected):
    generation = Generation("p1", "Step 1: 3 + 2 = 5\nThe answer is: 5", 12, ["3 + 2 = 5"], "5")
    kind, trace = choose_reference(PROBLEM, generation, fp_correct, mode)
    assert kind == expected
    if expected == "fp":
        assert trace.steps == ("3 + 2 = 5",)
    if expected == "gold":
        assert trace is PROBLEM


def test_choose_reference_without_gold_steps():
    generation = Generation("p1", "", 0, [], None)
    assert choose_reference(Problem("p1", "q", (), "5"), generation, False, "auto") == (None, None)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="--reference"):
        DiagnoseConfig(dataset="x", reference="teacher")
    with pytest.raises(ConfigError, match="--limit must be positive"):
        DiagnoseConfig(dataset="x", limit=0)
    with pytest.raises(ConfigError, match="--few-shot must not be negative, got -1"):
        DiagnoseConfig(dataset="x", few_shot=-1)
    with pytest.raises(ConfigError, match="needs a judge model"):
        DiagnoseConfig(dataset="x", judges=3)


def _record(pid, fp_ok, q_ok, fault_step=None, error_type=None, teacher=None):
    fault = None if fault_step is None else {"step_index": fault_step, "error_type": error_type, "step": "s",
                                             "reference_step": "r", "detail": ""}
    record = ProblemDiagnosis(pid, "q", "1", "1", "2", {"strict": fp_ok, "flexible": fp_ok},
                              {"strict": False, "flexible": q_ok}, "gold", fault, "rules" if fault else None, teacher)
    if fault is not None and teacher is not None:
        record.agree = fault_step == teacher
    return record


def test_summarize_counts():
    records = [_record("a", True, False, 0, "execution", 0), _record("b", True, False, 2, "method", 1),
               _record("c", False, True), _record("d", True, False, 0, "execution")]
    summary = summarize(records, DiagnoseConfig(dataset="x"), {}, {"generate_fp": 30.0, "generate_q": 30.0,
                                                                   "teacher_forcing": 6.0})
    assert summary["accuracy"]["fp"] == {"strict": 0.75, "flexible": 0.75}
    assert summary["accuracy"]["q"] == {"strict": 0.0, "flexible": 0.25}
    assert summary["fault_histogram"] == {"1": 2, "3": 1}
    assert summary["teacher_forced_histogram"] == {"1": 1, "2": 1}
    assert summary["error_types"] == {"execution": 2, "conceptual": 0, "method": 1, "reasoning": 0}
    assert summary["agreement"] == {"problems_with_both": 2, "same_step": 1, "share": 0.5}
    assert summary["problems_per_minute"] == {"generated": 4.0, "teacher_forced": 40.0}


def test_solution_lengths_counts():
    from repair.generate import Generation

    generations = [Generation("a", "The answer is: 3\n", 6, [], "3"),
                   Generation("b", "Step 1: 2 + 2 = 4\nStep 2: 4 * 2 = 8\n", 16, ["2 + 2 = 4", "4 * 2 = 8"], None)]
    lengths = solution_lengths(generations, max_new_tokens=16)
    assert lengths["mean_new_tokens"] == 11.0
    assert lengths["mean_steps"] == 1.0
    assert lengths["no_step"] == 1
    assert lengths["no_answer_line"] == 1
    assert lengths["at_token_cap"] == 1


def test_bar_chart_bar_heights():
    svg = bar_chart("t", ["a", "b"], {"s": [2.0, 4.0]}, y_max=4.0)
    heights = [float(h) for h in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', svg)]
    assert len(heights) == 2
    assert heights[1] == pytest.approx(2 * heights[0])


def test_figures_and_report_from_summary():
    records = [_record("a", True, False, 0, "execution", 0)]
    diagnosis = summarize(records, DiagnoseConfig(dataset="x"), {"source": "x"}, {"generate_fp": 1.0, "generate_q": 1.0})
    diagnosis["margin_traces"] = [{"problem_id": "a", "fp_margin": [1.0, 2.0, -1.0], "q_margin": [0.5, -1.0, -2.0],
                                   "token_step": [0, 0, 1], "frontier_step": 0, "fault_step": 0}]
    diagnosis["teacher_forced_pool"] = None
    diagnosis["problems"] = [vars(r) for r in records]
    figures = build_figures(diagnosis)
    assert set(figures) == {"accuracy", "fault_positions", "error_types", "margins_1"}
    diagnosis["solutions"] = {"fp": {"mean_new_tokens": 150.0, "mean_steps": 4.0, "no_step": 0, "no_answer_line": 1,
                                     "at_token_cap": 1},
                              "q": {"mean_new_tokens": 24.4, "mean_steps": 0.5, "no_step": 7, "no_answer_line": 0,
                                    "at_token_cap": 0}}
    html = render_report(diagnosis, figures)
    assert "<td>execution</td><td>rules</td>" in html
    assert '<td>quantized</td><td class="num">24.4</td><td class="num">0.5</td>' in html
    assert '<td class="num">7</td>' in html
    assert "teacher-forced frontier, step 1" in html
