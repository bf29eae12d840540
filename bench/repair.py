"""Benchmark the repair itself: which training data and objective bring the quantized model back.

For each bit-width, one run quantizes the model, scores the training pool and locates the
first faulty steps. Every variant then reuses that run (``Run.fork``) and trains one adapter
per seed:

- frontier SFT: the first faulty steps, loss on the step (the product's default);
- frontier DPO: the same steps, preferred over the quantized model's own step;
- random SFT: as many steps drawn at random from the same problems (the baseline);
- control: the frontier SFT adapter trained on the full-precision model instead.

All of them are scored on the same held-out problems by teacher forcing, and on non-math text.

    python bench/repair.py --dataset ../shared/data/gsm8k --general-text ../shared/data/general/tinyshakespeare-120k.txt
    python bench/repair.py --bits 3 --seeds 0 --budget 64 --train-problems 120 --test-problems 50
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

# Python puts this script's folder first on sys.path, and bench/repair.py there would shadow the
# installed repair package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

log = logging.getLogger("bench.repair")

# Variant name -> the RunConfig settings that make it. The control is trained in the frontier
# SFT run (``control=True``) and read from the same verify.json.
VARIANTS = {
    "frontier SFT": {"selection": "frontier", "objective": "sft", "control": True},
    "frontier DPO": {"selection": "frontier", "objective": "dpo"},
    "random SFT": {"selection": "random", "objective": "sft"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="Model to repair (alias, folder, .gguf or Hub id).")
    parser.add_argument("--dataset", default="../shared/data/gsm8k", help="Dataset with train and test splits.")
    parser.add_argument("--general-text", default="../shared/data/general/tinyshakespeare-120k.txt",
                        help="Plain-text file of non-math text scored under every model; empty to skip.")
    parser.add_argument("--generated-problems", type=int, default=0,
                        help="Held-out problems solved by generation (0 skips it: SmolLM2-135M solves too few GSM8K "
                             "problems for accuracy to compare the variants).")
    parser.add_argument("--bits", default="3,4", help="Comma-separated bit-widths.")
    parser.add_argument("--method", default="gptq", help="Quantization method.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds; each trains every variant once.")
    parser.add_argument("--budget", type=int, default=332, help="Records per adapter.")
    parser.add_argument("--train-problems", type=int, default=350, help="Training-split problems scored.")
    parser.add_argument("--test-problems", type=int, default=100, help="Held-out problems scored.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated variant names.")
    parser.add_argument("--work-dir", type=Path, default=Path("bench-runs"), help="Folder for the run folders (reused).")
    parser.add_argument("--table-only", action="store_true",
                        help="Print the table from the finished run folders in --work-dir and run nothing; the seeds "
                             "column counts the finished ones.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import torch

    from repair.config import RunConfig
    from repair.pipeline import Run

    variants = [name.strip() for name in args.variants.split(",")]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    results: dict[int, dict[str, list[dict]]] = {}
    by_step: dict[int, dict[str, list[dict]]] = {}
    shared_seconds: dict[int, float] = {}

    for bits in [int(b) for b in args.bits.split(",")]:
        # Shared stages: quantize, score and locate once per bit-width
        base_config = RunConfig(model=args.model, bits=bits, method=args.method, pull=False, dataset=args.dataset,
                                train_problems=args.train_problems, test_problems=args.test_problems,
                                budget=args.budget)
        base = Run(base_config, args.work_dir / f"w{bits}-base")
        if not args.table_only:
            base.run("locate")
        shared_seconds[bits] = sum(base.stage_seconds().values())
        results[bits] = {}

        # Variants, one adapter per seed; every variant of a seed runs before the next seed, so a
        # stopped benchmark still compares all variants.
        for seed in seeds:
            for name in variants:
                config = replace(base_config, seed=seed, general_text=args.general_text or None,
                                 generated_problems=args.generated_problems, **VARIANTS[name])
                slug = name.lower().replace(" ", "-")
                folder = args.work_dir / f"w{bits}-{slug}-seed{seed}"
                if args.table_only:
                    if not (folder / "verify.json").is_file():
                        continue
                    run = Run(config, folder)
                else:
                    run = base.fork(config, folder)
                    run.run("verify")
                verified = json.loads((run.root / "verify.json").read_text())
                trained = run.stage_summary("restore")
                row = _figures(verified, "repaired", trained["seconds"])
                results[bits].setdefault("full precision", []).append(_figures(verified, "reference", 0.0))
                results[bits].setdefault("quantized", []).append(_figures(verified, "quantized", 0.0))
                results[bits].setdefault(name, []).append(row)
                by_step.setdefault(bits, {}).setdefault(name, []).append(_flips_by_step(run.measure_dir))
                if "control" in trained:
                    results[bits].setdefault("control (FP + adapter)", []).append(
                        _figures(verified, "control", trained["control"]["seconds"]))
                log.info("W%d %s seed %d: NLL %.4f, gap closed %s, %.0f s training", bits, name, seed, row["nll"],
                         verified["gap_closed"], trained["seconds"])

    # Table: mean and spread (population standard deviation) across seeds
    threads = torch.get_num_threads()
    print(f"\nModel {args.model}, {args.method}; {args.test_problems} held-out problems of {args.dataset}; "
          f"{args.train_problems} training problems scored; budget {args.budget}; seeds {seeds}; "
          f"{'CUDA' if torch.cuda.is_available() else f'CPU, {threads} threads'}\n")
    print("Figures are mean ± standard deviation over seeds. Flips: decision tokens the full-precision model predicts "
          "and the model does not; restored and caused: flips of the quantized model that the adapter removed, and "
          "new ones. Non-math: NLL of the general text.\n")
    print("| bits | model | seeds | held-out NLL | top-1 agreement | flips | restored | caused | gap closed | non-math NLL "
          "| train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for bits, rows in results.items():
        for name, figures in rows.items():
            seeds = len(figures)
            if name in ("full precision", "quantized"):
                figures, seeds = figures[:1], "-"  # the same model in every run
            print(f"| {bits} | {name} | {seeds} | {_spread(figures, 'nll', 4)} | {_spread(figures, 'top1', 4)} | "
                  f"{_spread(figures, 'flips', 0)} | {_spread(figures, 'restored', 0)} | {_spread(figures, 'caused', 0)} | {_spread(figures, 'gap', 3)} | {_spread(figures, 'general', 4)} | "
                  f"{_spread(figures, 'seconds', 0)} |")
        print(f"| {bits} | (quantize, score and locate, shared) | | | | | | | | | {shared_seconds[bits]:.0f} |")
    _print_by_step(by_step)


# Steps from this one on share the last column of the by-step table; GSM8K solutions rarely go far beyond it.
LAST_STEP_COLUMN = 5


def _flips_by_step(measure_dir: Path) -> dict[int, dict[str, int]]:
    """Return, per step of the held-out solutions, the quantized model's flips and those the adapter restored or caused."""
    from repair.locate import find_flips
    from repair.measure import load_scores

    counts: dict[int, dict[str, int]] = {step: {"quantized": 0, "restored": 0, "caused": 0}
                                         for step in range(1, LAST_STEP_COLUMN + 1)}
    reference = load_scores(measure_dir / "reference_test.parquet")
    quantized = load_scores(measure_dir / "quantized_test.parquet")
    repaired = load_scores(measure_dir / "repaired_test.parquet")
    for fp, q, r in zip(reference, quantized, repaired):
        q_flips, r_flips = set(find_flips(fp, q)), set(find_flips(fp, r))
        for kind, positions in (("quantized", q_flips), ("restored", q_flips - r_flips), ("caused", r_flips - q_flips)):
            for position in positions:
                counts[min(fp.token_step[position] + 1, LAST_STEP_COLUMN)][kind] += 1
    return counts


def _print_by_step(by_step: dict[int, dict[str, list[dict]]]) -> None:
    """Print where each variant's adapter restores and causes flips along the held-out solutions."""
    steps = range(1, LAST_STEP_COLUMN + 1)
    print("\nHeld-out flips by solution step (the answer line counts as a step), mean over seeds: "
          "the quantized model's flips / restored by the adapter / caused by it.\n")
    print("| bits | variant | " + " | ".join(f"step {s}" + ("+" if s == LAST_STEP_COLUMN else "") for s in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for bits, variants in by_step.items():
        for name, runs in variants.items():
            cells = []
            for step in steps:
                means = [statistics.fmean(run[step][kind] for run in runs) for kind in ("quantized", "restored", "caused")]
                cells.append(" / ".join(f"{mean:.0f}" for mean in means))
            print(f"| {bits} | {name} | " + " | ".join(cells) + " |")


def _figures(verified: dict, model: str, seconds: float) -> dict:
    figures = verified["models"][model]
    reference, quantized = verified["models"]["reference"]["nll"], verified["models"]["quantized"]["nll"]
    flips = {"reference": 0, "quantized": verified["flips"]["quantized_flips"],
             "repaired": verified["flips"]["repaired_flips"]}.get(model)
    general = verified.get("general_text", {}).get(model, {}).get("nll")
    # Only the repaired model closes a quantization gap: the control starts from full precision.
    gap = None
    if model == "repaired" and quantized > reference:
        gap = (quantized - figures["nll"]) / (quantized - reference)
    # Flips of the quantized model that the adapter restored, and new flips that it caused.
    restored = verified["flips"]["flips_restored"] if model == "repaired" else None
    caused = verified["flips"]["flips_caused"] if model == "repaired" else None
    return {"nll": figures["nll"], "top1": figures["top1_agreement"], "flips": flips, "restored": restored,
            "caused": caused, "gap": gap,
            "general": general, "seconds": seconds}


def _spread(rows: list[dict], key: str, digits: int) -> str:
    values = [row[key] for row in rows if row[key] is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    log.info("Benchmark finished in %.0f s", time.perf_counter() - start)
