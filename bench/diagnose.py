"""Benchmark the diagnosis: teacher-forced against generated speed, and this tool's accuracy against lm-eval.

On the first N GSM8K test problems and the models of a finished ``repair diagnose`` run folder:

1. problems per minute of the teacher-forced diagnosis (score the gold solutions with both
   models, locate frontiers) and of the generated one (both models solve every problem,
   grading, first faulty step by rules);
2. the full-precision model's generated accuracy here beside lm-evaluation-harness's GSM8K
   task (its own 5-shot prompt, strict and flexible extractors) on the same problems, with
   per-problem agreement and time.

lm-eval runs in its own virtual environment (``pip install "lm-eval[hf]==0.4.13" torch==2.13.0``;
the ``hf`` extra brings accelerate), on the run's reference safetensors folder, with a copy of
its GSM8K task that reads the local JSON lines files, so nothing is downloaded. Run it from the
checkout after installing the project:

    python bench/diagnose.py --run-dir repair-runs/smollm2-135m-gptq-w3-<hash> --limit 100
    python bench/diagnose.py --run-dir RUN --limit 8 --generations DIAGNOSIS_OUTPUT --lmeval-python /work/lmeval-venv/bin/python
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Python puts this script's folder first on sys.path, and bench/repair.py there would shadow the
# installed repair package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

log = logging.getLogger("bench.diagnose")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="Run folder of a finished 'repair diagnose', with reference/ and quantized/.")
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/gsm8k"), help="GSM8K folder with train.jsonl and test.jsonl.")
    parser.add_argument("--limit", type=int, default=100, help="Test problems, from the start of the split.")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="Generated tokens per solution, here and in lm-eval.")
    parser.add_argument("--batch-size", type=int, default=16, help="Problems generated together, here and in lm-eval.")
    parser.add_argument("--generations", type=Path, default=None,
                        help="Output folder of 'repair diagnose' whose generated solutions (and their time) are reused "
                             "when they cover the same first problems; otherwise both models generate here.")
    parser.add_argument("--lmeval-python", default="/work/lmeval-venv/bin/python", help="Python of the venv with lm-eval.")
    parser.add_argument("--lmeval-fewshot", type=int, default=5, help="Few-shot examples in lm-eval's prompt (its GSM8K default is 5).")
    parser.add_argument("--work-dir", type=Path, default=None, help="Folder for lm-eval's task and samples (default: a temporary one).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-diagnose-"))
    work.mkdir(parents=True, exist_ok=True)

    from repair.data import load_eval_split

    problems = load_eval_split(str(args.dataset), "test", limit=args.limit).problems
    speed = compare_speed(args, problems)
    ours = speed.pop("fp_generations")
    # lm-eval runs after this tool's models are freed, so the two never compete for memory.
    lmeval = run_lmeval(args, work, len(problems))
    agreement = compare_accuracy(problems, ours, lmeval)
    print_tables(args, problems, speed, agreement, lmeval)


def compare_speed(args, problems) -> dict:
    """Time the teacher-forced and the generated diagnosis of ``problems`` with both models."""
    import torch
    from transformers import AutoModelForCausalLM

    from repair.faults import first_faulty_step
    from repair.generate import generate_solutions
    from repair.grading import grade
    from repair.locate import locate_frontiers
    from repair.measure import score_traces
    from repair.quantize import load_quantized
    from repair.sources import load_tokenizer
    from repair.steps import ANSWER_PREFIX

    tokenizer = load_tokenizer(args.run_dir / "reference")
    cached = _cached_generations(args.generations, problems)
    loaders = {"fp": lambda: AutoModelForCausalLM.from_pretrained(args.run_dir / "reference", dtype=torch.float32).eval(),
               "q": lambda: load_quantized(args.run_dir / "quantized")}
    scores, generations, generate_seconds = {}, {}, {}
    seconds = {"teacher_forced": 0.0, "generated": 0.0}
    for label, load in loaders.items():
        model = load()
        start = time.perf_counter()
        scores[label] = score_traces(model, tokenizer, problems, desc=f"score {label}")
        seconds["teacher_forced"] += time.perf_counter() - start
        if cached is not None:
            generations[label], spent = cached[label]
        else:
            generations[label], spent = generate_solutions(model, tokenizer, problems, None, args.batch_size,
                                                           args.max_new_tokens, desc=f"generate {label}")
        generate_seconds[label] = spent
        seconds["generated"] += spent
        del model
        gc.collect()

    # The model-free parts of each diagnosis
    start = time.perf_counter()
    frontiers = locate_frontiers(tokenizer, problems, scores["fp"], scores["q"])
    seconds["teacher_forced"] += time.perf_counter() - start
    start = time.perf_counter()
    faults = 0
    for problem, generation in zip(problems, generations["q"]):
        if not grade(problem.answer, generation.text)["flexible"]:
            reference = list(problem.steps) + [ANSWER_PREFIX + problem.answer]
            faults += first_faulty_step(problem.question, generation.steps, generation.answer_line, reference) is not None
    seconds["generated"] += time.perf_counter() - start

    count = len(problems)
    return {
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "problems_per_minute": {k: round(60 * count / v, 2) for k, v in seconds.items()},
        "frontiers": len(frontiers), "faults": faults, "generation_reused": cached is not None,
        "fp_generate_seconds": round(generate_seconds["fp"], 1),
        "fp_generations": (generations["fp"], generate_seconds["fp"]),
    }


def _cached_generations(folder: Path | None, problems) -> dict | None:
    """Return both models' generations and seconds from a diagnosis folder, scaled to ``problems``, or None."""
    from repair.generate import Generation

    if folder is None:
        return None
    result = {}
    for label in ("fp", "q"):
        path = folder / f"generations-{label}.json"
        if not path.is_file():
            log.warning("No %s in %s; generating instead", path.name, folder)
            return None
        cached = json.loads(path.read_text())
        rows = cached["generations"]
        if [row["problem_id"] for row in rows[:len(problems)]] != [p.id for p in problems]:
            log.warning("%s covers other problems; generating instead", path)
            return None
        # Generation time is recorded for the whole batch run, so it is scaled to the share of problems used.
        share = len(problems) / len(rows)
        result[label] = ([Generation(**row) for row in rows[:len(problems)]], cached["seconds"] * share)
    log.info("Reusing generated solutions and their time from %s", folder)
    return result


_LOCAL_TASK = "gsm8k_local"


def write_lmeval_task(args, work: Path) -> Path:
    """Write lm-eval's GSM8K task with the local JSON lines files in place of the Hub dataset; return its folder."""
    installed = subprocess.run(
        [args.lmeval_python, "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
        check=True, capture_output=True, text=True).stdout.strip()
    text = (Path(installed) / "tasks" / "gsm8k" / "gsm8k.yaml").read_text()
    dataset = args.dataset.resolve()
    lines = []
    skipping_tags = False
    for line in text.splitlines():
        # The tag block would register a second task under the installed group name.
        if line.startswith("tag:"):
            skipping_tags = True
            continue
        if skipping_tags and line.startswith("  - "):
            continue
        skipping_tags = False
        if line.startswith("task:"):
            line = f"task: {_LOCAL_TASK}"
        elif line.startswith("dataset_path:"):
            line = ("dataset_path: json\ndataset_kwargs:\n  data_files:\n"
                    f"    train: {dataset / 'train.jsonl'}\n    test: {dataset / 'test.jsonl'}")
        elif line.startswith("dataset_name:"):
            line = "dataset_name: null"
        lines.append(line)
    folder = work / "lmeval-task"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{_LOCAL_TASK}.yaml").write_text("\n".join(lines) + "\n")
    return folder


def run_lmeval(args, work: Path, limit: int) -> dict:
    """Run lm-eval's GSM8K task on the reference folder; return per-question results and the seconds spent."""
    task_dir = write_lmeval_task(args, work)
    output = work / "lmeval-output"
    command = [args.lmeval_python, "-m", "lm_eval", "run", "--model", "hf",
               "--model_args", f"pretrained={(args.run_dir / 'reference').resolve()},dtype=float32",
               "--tasks", _LOCAL_TASK, "--include_path", str(task_dir), "--limit", str(limit),
               "--num_fewshot", str(args.lmeval_fewshot), "--batch_size", str(args.batch_size), "--device", "cpu",
               "--gen_kwargs", f"max_gen_toks={args.max_new_tokens}", "--log_samples", "--output_path", str(output)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log.info("Running lm-eval: %s", " ".join(command))
    start = time.perf_counter()
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (work / "lmeval.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise SystemExit(f"lm-eval failed with exit code {completed.returncode}; see {work / 'lmeval.log'}")

    samples = sorted(output.rglob(f"samples_{_LOCAL_TASK}_*.jsonl"))
    if not samples:
        raise SystemExit(f"lm-eval wrote no samples file under {output}; see {work / 'lmeval.log'}")
    per_question = {}
    for line in samples[-1].read_text().splitlines():
        sample = json.loads(line)
        # Each sample is written once per filter, or once with a list of filtered answers.
        entry = per_question.setdefault(sample["doc"]["question"].strip(), {})
        entry[sample["filter"]] = bool(sample["exact_match"])
    return {"seconds": seconds, "per_question": per_question}


def compare_accuracy(problems, ours, lmeval: dict) -> dict:
    """Count per-problem agreement between this tool's flexible grade and lm-eval's flexible-extract."""
    from repair.grading import grade

    generations, _ = ours
    counts = {"both_correct": 0, "both_wrong": 0, "only_here": 0, "only_lmeval": 0, "missing_in_lmeval": 0}
    accuracy = {"here_strict": 0, "here_flexible": 0, "lmeval_strict": 0, "lmeval_flexible": 0}
    for problem, generation in zip(problems, generations):
        here = grade(problem.answer, generation.text)
        theirs = lmeval["per_question"].get(problem.question.strip())
        if theirs is None:
            counts["missing_in_lmeval"] += 1
            continue
        accuracy["here_strict"] += here["strict"]
        accuracy["here_flexible"] += here["flexible"]
        accuracy["lmeval_strict"] += theirs.get("strict-match", False)
        accuracy["lmeval_flexible"] += theirs.get("flexible-extract", False)
        key = {(True, True): "both_correct", (False, False): "both_wrong", (True, False): "only_here",
               (False, True): "only_lmeval"}[(here["flexible"], theirs.get("flexible-extract", False))]
        counts[key] += 1
    return {"counts": counts, "correct": accuracy}


def print_tables(args, problems, speed: dict, agreement: dict, lmeval: dict) -> None:
    count = len(problems)
    compared = count - agreement["counts"]["missing_in_lmeval"]
    reused = " (generation time reused from the diagnose run, scaled to these problems)" if speed["generation_reused"] else ""
    print(f"\nRun folder {args.run_dir}; the first {count} GSM8K test problems; "
          f"at most {args.max_new_tokens} new tokens, batch {args.batch_size}.\n")
    print("| diagnosis | seconds (both models) | problems per minute | problems located |")
    print("|---|---|---|---|")
    print(f"| teacher-forced (gold solutions) | {speed['seconds']['teacher_forced']} | "
          f"{speed['problems_per_minute']['teacher_forced']} | {speed['frontiers']} frontiers |")
    print(f"| generated (solve, grade, rules){reused} | {speed['seconds']['generated']} | "
          f"{speed['problems_per_minute']['generated']} | {speed['faults']} faulty steps |")
    correct = agreement["correct"]
    print(f"\nFull-precision model on the same {compared} problems:\n")
    print("| evaluator | strict | flexible | seconds |")
    print("|---|---|---|---|")
    print(f"| this tool (zero-shot step prompt, chat template) | {correct['here_strict']}/{compared} | "
          f"{correct['here_flexible']}/{compared} | {speed['fp_generate_seconds']:.0f} |")
    print(f"| lm-eval gsm8k ({args.lmeval_fewshot}-shot, no chat template) | {correct['lmeval_strict']}/{compared} | "
          f"{correct['lmeval_flexible']}/{compared} | {lmeval['seconds']:.0f} |")
    counts = agreement["counts"]
    print(f"\nPer-problem agreement (flexible extractors): both correct {counts['both_correct']}, both wrong "
          f"{counts['both_wrong']}, only this tool {counts['only_here']}, only lm-eval {counts['only_lmeval']}; "
          f"{(counts['both_correct'] + counts['both_wrong']) / compared:.0%} agree." if compared else "No problem compared.")


if __name__ == "__main__":
    main()
