"""Diagnosis from generated solutions: accuracy, first faulty steps and the report.

Both models solve each problem greedily in the step format. Their final answers are graded
with a strict and a flexible extractor. For every problem the quantized model gets wrong, its
solution is compared with a reference solution (the full-precision model's own correct one,
the dataset's gold one, or the first where it exists) to find the first faulty step by rules,
and by a judge model where the rules find none. The reference traces are also scored by
teacher forcing, so that each generated frontier can be checked against the teacher-forced one.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from repair.config import _REPO_ID
from repair.errors import ConfigError
from repair.faults import ERROR_TYPES, first_faulty_step
from repair.generate import Generation, generate_solutions
from repair.grading import EXTRACTORS, extract_answer, grade
from repair.judge import StepJudge
from repair.judge_api import is_url, public_name
from repair.progress import ProgressCallback
from repair.steps import ANSWER_PREFIX, Problem

log = logging.getLogger(__name__)

Reference = Literal["fp", "gold", "auto"]
REFERENCES: tuple[str, ...] = get_args(Reference)


def _help(text: str, **kwargs) -> dict:
    return {"metadata": {"help": text}, **kwargs}


@dataclass
class DiagnoseConfig:
    """Settings of the generated diagnosis. They do not enter the run's fingerprint."""

    dataset: str = field(**_help("Hub dataset id, or a local file or folder, of the problems to solve."))
    split: str = field(default="test", **_help("Split of the dataset to solve."))
    dataset_config: str | None = field(default=None, **_help("Hub dataset configuration name."))
    question_field: str | None = field(default=None, **_help("Column with the question; found by name when unset."))
    answer_field: str | None = field(default=None, **_help("Column with the final answer or GSM8K solution; found by name when unset."))
    limit: int = field(default=200, **_help("Problems to solve, from the start of the split."))
    reference: Reference = field(default="auto", **_help(
        "Reference solution: fp (the full-precision model's own correct one), gold (the dataset's), "
        "or auto (fp where it solved the problem, gold elsewhere)."))
    few_shot: int = field(default=0, **_help("Worked examples put in the prompt, taken from after the solved problems."))
    # 256 new tokens fit a GSM8K solution of 5-8 steps with room to spare; a cap keeps CPU runs bounded.
    max_new_tokens: int = field(default=256, **_help("Maximum generated tokens per solution."))
    batch_size: int = field(default=16, **_help("Problems generated together."))
    judge: str | None = field(default=None, **_help(
        "Model that judges wrong solutions the rules cannot place: a local folder, .gguf file, alias or Hub id "
        "loaded here, or the http(s) URL of an OpenAI-compatible server."))
    judges: int = field(default=1, **_help("Judge votes per decision; the majority wins."))
    judge_api: bool = field(default=False, **_help(
        "Send the judge's questions to the Hugging Face Inference API (Inference Providers) instead of loading "
        "the judge model. Set automatically when the judge is an http(s) URL."))
    margin_traces: int = field(default=4, **_help("Reference traces whose token margins the report plots."))

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ConfigError(f"--reference {self.reference!r} is not supported", f"Use one of {', '.join(REFERENCES)}")
        for name in ("limit", "max_new_tokens", "batch_size", "judges"):
            value = getattr(self, name)
            if value <= 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be positive, got {value}", f"Pass a positive {flag}")
        for name in ("few_shot", "margin_traces"):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must not be negative, got {getattr(self, name)}", f"Pass 0 or more to {flag}")
        if self.judges > 1 and self.judge is None:
            raise ConfigError(f"--judges {self.judges} needs a judge model", "Pass --judge MODEL, or drop --judges")
        self._check_judge_api()

    def _check_judge_api(self) -> None:
        if is_url(self.judge):
            self.judge_api = True
            parts = urlsplit(self.judge)  # type: ignore[arg-type]
            try:
                parts.port
            except ValueError:
                raise ConfigError("--judge URL has an invalid port", "Give the port as a number from 1 to 65535") from None
            if not parts.hostname:
                raise ConfigError(f"--judge {public_name(self.judge)!r} is a URL without a host",
                                  "Give the server's address, such as http://127.0.0.1:8080/v1")
        if not self.judge_api:
            return
        if self.judge is None:
            raise ConfigError("--judge-api needs a judge model",
                              "Pass --judge with a Hub model id or the http(s) URL of an OpenAI-compatible server")
        if not is_url(self.judge) and (not _REPO_ID.match(self.judge) or ".." in self.judge):
            raise ConfigError(f"--judge-api sends requests to a served model, but --judge {self.judge!r} is neither "
                              "a Hub model id nor an http(s) URL",
                              "Pass a Hub id such as org/name or a server URL, or drop --judge-api to load it here")


@dataclass
class ProblemDiagnosis:
    """Everything the report shows about one problem."""

    problem_id: str
    question: str
    gold: str
    fp_answer: str | None
    q_answer: str | None
    fp_correct: dict[str, bool]
    q_correct: dict[str, bool]
    reference: str | None  # "fp", "gold" or None when no reference solution exists
    fault: dict | None = None
    fault_by: str | None = None  # "rules", "judge", or None
    teacher_forced_step: int | None = None  # 0-based frontier step of the reference trace
    agree: bool | None = None  # whether both frontiers are the same step, where both exist


def load_problems(config: DiagnoseConfig, token: str | None = None) -> tuple[list[Problem], list[Problem], dict]:
    """Return the problems to solve, the few-shot examples and the loader's summary."""
    from repair.data import load_eval_split

    loaded = load_eval_split(config.dataset, config.split, config.question_field, config.answer_field,  # type: ignore[arg-type]
                             config.dataset_config, config.limit + 4 * config.few_shot, token)
    problems = loaded.problems[:config.limit]
    examples = [p for p in loaded.problems[config.limit:] if p.steps][:config.few_shot]
    if len(examples) < config.few_shot:
        log.warning("Only %d of %d few-shot examples with gold steps were found after the first %d problems",
                    len(examples), config.few_shot, config.limit)
    return problems, examples, loaded.summary()


def choose_reference(problem: Problem, fp: Generation, fp_correct: bool, mode: Reference) -> tuple[str | None, Problem | None]:
    """Return the kind of reference and the reference trace of one problem, or (None, None) when there is none."""
    use_fp = fp_correct and bool(fp.steps) and mode in ("fp", "auto")
    if use_fp:
        answer = fp.answer_line or problem.answer
        return "fp", Problem(problem.id, problem.question, tuple(fp.steps), answer)
    if problem.steps and mode in ("gold", "auto"):
        return "gold", problem
    return None, None


def _cache_key(model_dir: Path, problems: list[Problem], examples: list[Problem], config: DiagnoseConfig) -> str:
    blob = json.dumps([str(model_dir.resolve()), [p.id for p in problems], [p.id for p in examples],
                       config.max_new_tokens], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _generate_cached(model, tokenizer, problems, examples, config, path: Path, key: str, progress,
                     desc: str) -> tuple[list[Generation], float]:
    """Generate solutions, or read them from ``path`` when an earlier call with the same key wrote them."""
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            log.info("Reusing %d generated solutions from %s", len(cached["generations"]), path)
            return [Generation(**g) for g in cached["generations"]], cached["seconds"]
    generations, seconds = generate_solutions(model, tokenizer, problems, examples, config.batch_size,
                                              config.max_new_tokens, progress, desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "seconds": seconds, "generations": [g.to_dict() for g in generations]}))
    return generations, seconds


def run_diagnosis(reference_dir: Path, quantized_dir: Path, config: DiagnoseConfig, output: Path,
                  token: str | None = None, progress: ProgressCallback | None = None,
                  teacher_forced_pool: dict | None = None) -> dict:
    """Generate, grade and locate on ``config.limit`` problems; write diagnosis.json and report.html to ``output``.

    ``teacher_forced_pool`` is the locate stage's summary of the run, shown beside the results.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from repair.locate import locate_frontiers
    from repair.measure import score_traces
    from repair.quantize import load_quantized
    from repair.sources import load_tokenizer

    # An API judge loads nothing, so its settings are checked before hours of generation
    api_judge = None
    if config.judge and config.judge_api:
        from repair.judge_api import ApiJudge

        api_judge = ApiJudge.connect(config.judge, config.judges, token)

    problems, examples, data_summary = load_problems(config, token)
    tokenizer = load_tokenizer(reference_dir)
    output.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    # Full-precision model: generate, grade, choose the references, score them by teacher forcing
    model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
    fp, seconds["generate_fp"] = _generate_cached(
        model, tokenizer, problems, examples, config, output / "generations-fp.json",
        _cache_key(reference_dir, problems, examples, config), progress, "generate full precision")
    fp_grades = [grade(p.answer, g.text) for p, g in zip(problems, fp)]
    chosen = [choose_reference(p, g, grades["flexible"], config.reference) for p, g, grades in zip(problems, fp, fp_grades)]
    traces = [trace for _, trace in chosen if trace is not None]
    start = time.perf_counter()
    fp_scores = score_traces(model, tokenizer, traces, progress=progress, desc="score references (full precision)")
    seconds["teacher_forcing"] = time.perf_counter() - start
    del model
    gc.collect()

    # Quantized model: the same
    model = load_quantized(quantized_dir)
    q, seconds["generate_q"] = _generate_cached(
        model, tokenizer, problems, examples, config, output / "generations-q.json",
        _cache_key(quantized_dir, problems, examples, config), progress, "generate quantized")
    q_grades = [grade(p.answer, g.text) for p, g in zip(problems, q)]
    start = time.perf_counter()
    q_scores = score_traces(model, tokenizer, traces, progress=progress, desc="score references (quantized)")
    seconds["teacher_forcing"] += time.perf_counter() - start
    del model
    gc.collect()

    # Teacher-forced frontiers of the same reference traces
    frontiers = {f.problem_id: f for f in locate_frontiers(tokenizer, traces, fp_scores, q_scores)}

    # First faulty step of every wrong quantized solution: rules first, then the judge
    start = time.perf_counter()
    records = []
    unplaced: list[tuple[ProblemDiagnosis, Problem, Generation]] = []
    for problem, fp_generation, q_generation, fp_grade, q_grade, (kind, trace) in zip(
            problems, fp, q, fp_grades, q_grades, chosen):
        record = ProblemDiagnosis(
            problem.id, problem.question, problem.answer,
            extract_answer(fp_generation.text, "flexible"), extract_answer(q_generation.text, "flexible"),
            fp_grade, q_grade, kind)
        frontier = frontiers.get(problem.id)
        if frontier is not None:
            record.teacher_forced_step = frontier.step_index
        if trace is not None and not q_grade["flexible"]:
            reference = list(trace.steps) + [ANSWER_PREFIX + trace.answer]
            fault = first_faulty_step(problem.question, q_generation.steps, q_generation.answer_line, reference)
            if fault is not None:
                record.fault, record.fault_by = fault.to_dict(), "rules"
            else:
                unplaced.append((record, trace, q_generation))
        records.append(record)
    seconds["rules"] = time.perf_counter() - start

    if config.judge and unplaced:
        from repair.judge import Judge

        start = time.perf_counter()
        judge = api_judge or Judge.load(config.judge, config.judges, token)
        try:
            settle_unplaced(judge, unplaced)
        finally:
            judge.close()
        del judge
        gc.collect()
        seconds["judge"] = time.perf_counter() - start
    elif api_judge is not None:
        api_judge.close()

    for record in records:
        if record.fault is not None and record.teacher_forced_step is not None:
            record.agree = record.fault["step_index"] == record.teacher_forced_step

    diagnosis = summarize(records, config, data_summary, seconds)
    diagnosis["solutions"] = {"fp": solution_lengths(fp, config.max_new_tokens),
                              "q": solution_lengths(q, config.max_new_tokens)}
    diagnosis["margin_traces"] = _margin_traces(tokenizer, traces, fp_scores, q_scores, frontiers, records,
                                                config.margin_traces)
    diagnosis["teacher_forced_pool"] = teacher_forced_pool
    diagnosis["problems"] = [asdict(r) for r in records]
    write_outputs(diagnosis, output)
    return diagnosis


def settle_unplaced(judge: StepJudge, unplaced: list[tuple[ProblemDiagnosis, Problem, Generation]]) -> None:
    """Set the judge's fault on each record that the rules left unplaced; abstained ones stay unplaced."""
    for record, trace, generation in unplaced:
        reference = list(trace.steps) + [ANSWER_PREFIX + trace.answer]
        fault = judge.settle(record.question, generation.steps, generation.answer_line, reference, record.problem_id)
        if fault is not None:
            record.fault, record.fault_by = fault.to_dict(), "judge"


def solution_lengths(generations: list[Generation], max_new_tokens: int) -> dict:
    """Return the length figures of one model's solutions.

    These are the mean new tokens and steps, and the counts of solutions with no step, with no
    final-result line, and that stopped at the token cap.
    """
    count = len(generations) or 1
    return {
        "mean_new_tokens": round(sum(g.new_tokens for g in generations) / count, 1),
        "mean_steps": round(sum(len(g.steps) for g in generations) / count, 2),
        "no_step": sum(not g.steps for g in generations),
        "no_answer_line": sum(g.answer_line is None for g in generations),
        "at_token_cap": sum(g.new_tokens >= max_new_tokens for g in generations),
    }


def summarize(records: list[ProblemDiagnosis], config: DiagnoseConfig, data_summary: dict, seconds: dict) -> dict:
    """Return accuracy, fault positions, error types and agreement over all problems."""
    count = len(records)
    accuracy = {
        model: {extractor: round(sum(getattr(r, f"{model}_correct")[extractor] for r in records) / count, 4)
                for extractor in EXTRACTORS}
        for model in ("fp", "q")
    } if count else {}
    faults = [r.fault for r in records if r.fault is not None]
    positions = Counter(f["step_index"] + 1 for f in faults)
    teacher_positions = Counter(r.teacher_forced_step + 1 for r in records if r.teacher_forced_step is not None)
    both = [r for r in records if r.agree is not None]
    types = Counter(f["error_type"] for f in faults)
    q_wrong = sum(not r.q_correct["flexible"] for r in records)
    settings = asdict(config)
    settings["judge"] = public_name(config.judge)  # a URL's password or key stays out of the report
    return {
        "settings": settings,
        "data": data_summary,
        "problems_solved": count,
        "accuracy": accuracy,
        "q_wrong": q_wrong,
        "q_wrong_with_reference": sum(not r.q_correct["flexible"] and r.reference is not None for r in records),
        "references": dict(Counter(r.reference or "none" for r in records)),
        "faults_found": {"rules": sum(r.fault_by == "rules" for r in records),
                         "judge": sum(r.fault_by == "judge" for r in records),
                         "not_placed": sum(not r.q_correct["flexible"] and r.reference is not None and r.fault is None
                                           for r in records)},
        "fault_histogram": {str(k): positions[k] for k in sorted(positions)},
        "teacher_forced_histogram": {str(k): teacher_positions[k] for k in sorted(teacher_positions)},
        "error_types": {name: types.get(name, 0) for name in ERROR_TYPES},
        "agreement": {"problems_with_both": len(both), "same_step": sum(bool(r.agree) for r in both),
                      "share": round(sum(bool(r.agree) for r in both) / len(both), 4) if both else None},
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
        "problems_per_minute": {
            "generated": round(60 * count / (seconds["generate_fp"] + seconds["generate_q"]), 2)
            if seconds.get("generate_fp") else None,
            "teacher_forced": round(60 * count / seconds["teacher_forcing"], 2) if seconds.get("teacher_forcing") else None,
        },
    }


def _margin_traces(tokenizer, traces: list[Problem], fp_scores, q_scores, frontiers: dict, records, limit: int) -> list[dict]:
    """Return token margins along up to ``limit`` reference traces, those with both frontiers first."""
    by_id = {r.problem_id: r for r in records}
    order = sorted(range(len(traces)), key=lambda i: (by_id[traces[i].id].fault is None,
                                                      traces[i].id not in frontiers))
    result = []
    for index in order[:limit]:
        fp, q = fp_scores[index], q_scores[index]
        frontier = frontiers.get(traces[index].id)
        result.append({
            "problem_id": traces[index].id,
            "fp_margin": [round(m, 3) for m in fp.margin],
            "q_margin": [round(m, 3) for m in q.margin],
            "token_step": fp.token_step,
            "frontier_step": frontier.step_index if frontier else None,
            "fault_step": (by_id[traces[index].id].fault or {}).get("step_index"),
        })
    return result


def write_outputs(diagnosis: dict, output: Path) -> None:
    """Write diagnosis.json and the self-contained report.html into ``output``."""
    from repair.report import build_figures, render_report

    output.mkdir(parents=True, exist_ok=True)
    (output / "diagnosis.json").write_text(json.dumps(diagnosis, indent=2, default=str))
    figures = build_figures(diagnosis)
    (output / "report.html").write_text(render_report(diagnosis, figures), encoding="utf-8")
    log.info("Wrote %s and %s", output / "diagnosis.json", output / "report.html")


def diagnose_run(run, config: DiagnoseConfig, output: Path | None = None) -> dict:
    """Run the pipeline up to locate, then the generated diagnosis, writing into ``output`` or the run folder."""
    run.run("locate")
    destination = output if output is not None else run.root / "report"
    return run_diagnosis(run.reference_dir, run.quantized_dir, config, destination, run.token, run.progress,
                         run.stage_summary("locate"))
