"""Benchmark the quantization methods on one model: time, checkpoint size, held-out NLL and top-1 agreement.

Every method is compared in the same run against the full-precision model, and the
calibration-free round-to-nearest rows are the baseline that calibrated methods must beat.

    python bench/quantize.py --dataset ../shared/data/gsm8k
    python bench/quantize.py --variants gptq:4,rtn:4 --test-problems 50
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_VARIANTS = "rtn:4,rtn:3,gptq:4,gptq:3,awq:4,awq:3,smoothquant:8"

# Python puts this script's folder first on sys.path, and bench/repair.py there would shadow the
# installed repair package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

log = logging.getLogger("bench.quantize")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="Model to quantize (alias, folder, .gguf or Hub id).")
    parser.add_argument("--dataset", default="../shared/data/gsm8k", help="Dataset with train and test splits.")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="Comma-separated method:bits pairs.")
    parser.add_argument("--test-problems", type=int, default=100, help="Held-out problems scored per model.")
    parser.add_argument("--calibration-samples", type=int, default=32, help="Calibration problems per method.")
    parser.add_argument("--calibration-length", type=int, default=256, help="Maximum tokens per calibration problem.")
    parser.add_argument("--work-dir", type=Path, default=None, help="Folder for the checkpoints (default: a temporary one).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import torch

    from repair.data import load_split
    from repair.measure import score_traces, summarize
    from repair.quantize import load_quantized, quantize
    from repair.sources import load_reference, load_tokenizer, resolve_model, save_reference

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    test = load_split(args.dataset, "test", limit=args.test_problems).problems
    calibration = load_split(args.dataset, "train", limit=args.calibration_samples).problems

    # Full precision, saved once
    model, tokenizer = load_reference(resolve_model(args.model))
    reference_dir = work / "reference"
    save_reference(model, tokenizer, reference_dir)
    tokenizer = load_tokenizer(reference_dir)
    start = time.perf_counter()
    fp = summarize(score_traces(model, tokenizer, test))
    fp_seconds = time.perf_counter() - start
    reference_mb = sum(f.stat().st_size for f in reference_dir.glob("*.safetensors")) / 1e6
    rows = [("full precision", "-", 0.0, reference_mb, fp["nll"], fp["top1_agreement"])]
    log.info("full precision: NLL %.4f, top-1 %.4f (scored in %.0f s)", fp["nll"], fp["top1_agreement"], fp_seconds)
    del model
    gc.collect()

    # Each variant
    for variant in args.variants.split(","):
        method, bits = variant.split(":")
        output = work / variant.replace(":", "-w")
        result = quantize(reference_dir, output, method, int(bits), None,
                          [] if method == "rtn" else calibration, args.calibration_length)
        quantized = load_quantized(output)
        figures = summarize(score_traces(quantized, tokenizer, test))
        size_mb = sum(f.stat().st_size for f in output.glob("*.safetensors")) / 1e6
        rows.append((method, f"W{bits}" + ("A8" if method == "smoothquant" else ""), result.seconds, size_mb,
                     figures["nll"], figures["top1_agreement"]))
        log.info("%s W%s: %.0f s, NLL %.4f", method, bits, result.seconds, figures["nll"])
        del quantized
        gc.collect()

    # Table
    threads = torch.get_num_threads()
    print(f"\nModel {args.model}; {len(test)} held-out problems of {args.dataset}; "
          f"{len(calibration)} calibration problems of at most {args.calibration_length} tokens; "
          f"{'CUDA' if torch.cuda.is_available() else f'CPU, {threads} threads'}\n")
    print("| method | scheme | quantize s | checkpoint MB | held-out NLL | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for name, scheme, seconds, size, nll, top1 in rows:
        print(f"| {name} | {scheme} | {seconds:.0f} | {size:.1f} | {nll:.4f} | {top1:.4f} |")


if __name__ == "__main__":
    main()
