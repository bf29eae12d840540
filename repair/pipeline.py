"""Run the stages in a run folder, resuming where an earlier run stopped.

Every stage writes its outputs into a temporary folder that is renamed into place, then
records itself in ``manifest.json``. A killed run therefore leaves either a finished stage
or none, and a rerun with the same configuration recomputes nothing that finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from repair.config import STAGES, RunConfig, Stage
from repair.errors import RunFolderError
from repair.progress import ProgressCallback
from repair.sources import LoadPolicy

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"  # held by the process that runs stages in the folder


# Settings that the stages up to locate never read, so runs that differ only in them share those stages.
FORKABLE_FIELDS = {"selection", "objective", "dpo_beta", "control", "merge", "general_text", "generated_problems", "budget", "lora_rank", "lora_alpha",
                   "learning_rate", "epochs", "batch_size", "max_length", "seed"}


def _field_default(name: str):
    """Return the default of a RunConfig field as ``to_dict`` writes it, or a sentinel when it has none."""
    for item in dataclasses.fields(RunConfig):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
    return object()


def _link_or_copy(source, destination) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def default_run_dir(config: RunConfig) -> Path:
    return Path("repair-runs") / f"{config.slug()}-{config.fingerprint()}"


class Run:
    """A run folder bound to one configuration."""

    def __init__(self, config: RunConfig, root: Path | None = None, token: str | None = None,
                 progress: ProgressCallback | None = None, load_policy: LoadPolicy | None = None):
        self.config = config
        self.root = Path(root) if root is not None else default_run_dir(config)
        self.token = token  # used for Hub downloads only; never written to the run folder
        self.progress = progress
        # Safety switches for loading the model; they change no result, so they are not in config.json.
        self.load_policy = load_policy or LoadPolicy()
        self._open()

    # Paths of the artifacts
    @property
    def reference_dir(self) -> Path:
        return self.root / "reference"

    @property
    def quantized_dir(self) -> Path:
        return self.root / "quantized"

    @property
    def measure_dir(self) -> Path:
        return self.root / "measure"

    @property
    def silver_dir(self) -> Path:
        return self.root / "silver"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    # Manifest
    def _open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(f"cannot create run folder {self.root}: {error.strerror}",
                                 "Pass --run-dir with a writable folder") from error
        config_file = self.root / "config.json"
        expected = self.config.to_dict()
        if config_file.is_file():
            existing = json.loads(config_file.read_text())
            # A setting added by a later version is absent from older folders; at its default it changes nothing.
            for name, value in expected.items():
                if name not in existing and _field_default(name) == value:
                    existing[name] = value
            if existing != expected:
                changed = sorted(k for k in set(existing) | set(expected) if existing.get(k) != expected.get(k))
                raise RunFolderError(
                    f"run folder {self.root} was made with other settings ({', '.join(changed)} differ)",
                    "Rerun with the same settings, or pass a new --run-dir",
                )
        else:
            self._write_json(config_file, expected)
        if not (self.root / MANIFEST).is_file():
            self._write_json(self.root / MANIFEST, {"fingerprint": self.config.fingerprint(), "stages": {}})

    @property
    def manifest(self) -> dict:
        return json.loads((self.root / MANIFEST).read_text())

    def is_done(self, stage: Stage) -> bool:
        return stage in self.manifest["stages"]

    def stage_summary(self, stage: Stage) -> dict:
        return self.manifest["stages"][stage]["summary"]

    def _write_json(self, path: Path, data: dict) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=2, default=str))
            os.replace(tmp, path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise RunFolderError(f"cannot write {path}: {error.strerror}",
                                 "Free disk space or pass --run-dir on another disk, then rerun to resume") from error

    def _finish(self, stage: Stage, summary: dict, seconds: float) -> None:
        manifest = self.manifest
        manifest["stages"][stage] = {"seconds": round(seconds, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "summary": summary}
        self._write_json(self.root / MANIFEST, manifest)

    @contextlib.contextmanager
    def locked(self):
        """Hold the run folder's lock, so that a second process cannot stage into the same folder.

        The lock is an advisory ``flock``, which the kernel releases when the holder exits, so a
        killed run leaves no stale lock behind.
        """
        with open(self.root / LOCK, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise RunFolderError(f"run folder {self.root} is in use by another repair process",
                                     "Wait for that run to finish, or pass another --run-dir") from error
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _staging(self, name: str) -> Path:
        """Return an empty temporary folder whose contents ``_commit`` moves into the run folder."""
        tmp = self.root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def _commit(self, tmp: Path, into: Path | None = None) -> None:
        """Move everything in ``tmp`` into the run folder, merging folders that already exist."""
        into = self.root if into is None else into
        for item in tmp.iterdir():
            target = into / item.name
            if item.is_dir() and target.is_dir():
                self._commit(item, target)
                continue
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        tmp.rmdir()

    # Stages
    def run(self, until: Stage = "verify") -> dict:
        """Run every unfinished stage up to and including ``until``; return the manifest's stage summaries."""
        functions: dict[str, Callable[[Run, Path], dict]] = {
            "prepare": _prepare, "quantize": _quantize, "measure": _measure,
            "locate": _locate, "silver": _silver, "restore": _restore, "verify": _verify,
        }
        with self.locked():
            for stage in STAGES[:STAGES.index(until) + 1]:
                if self.is_done(stage):
                    log.info("Stage %s already finished in %s, skipping", stage, self.root)
                    continue
                log.info("Stage %s: starting", stage)
                start = time.perf_counter()
                tmp = self._staging(stage)
                try:
                    summary = functions[stage](self, tmp)
                    self._commit(tmp)
                except OSError as error:
                    shutil.rmtree(tmp, ignore_errors=True)
                    if error.errno == 28:  # ENOSPC
                        raise RunFolderError(f"the disk of {self.root} is full during stage {stage}",
                                             "Free disk space, then rerun the same command to resume") from error
                    raise
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                seconds = time.perf_counter() - start
                self._finish(stage, summary, seconds)
                log.info("Stage %s: finished in %.1f s", stage, seconds)
        return {name: entry["summary"] for name, entry in self.manifest["stages"].items()}

    def fork(self, config: RunConfig, root: Path) -> Run:
        """Start a run folder for ``config`` that reuses this run's finished stages up to locate.

        Only settings that first matter in the silver stage may differ (step selection, objective,
        training settings, seed, control, general text, a budget no larger than this run's), so a
        variant trains and verifies without quantizing and scoring again. Files are hard-linked
        where the file system allows it, else copied.
        """
        ours, theirs = self.config.to_dict(), config.to_dict()
        changed = sorted(k for k in ours if ours[k] != theirs[k] and k not in FORKABLE_FIELDS)
        if changed:
            raise RunFolderError(f"cannot fork {self.root}: {', '.join(changed)} differ before the silver stage",
                                 "Start a new run instead")
        if config.budget > self.config.budget:
            raise RunFolderError(f"cannot fork {self.root} with --budget {config.budget} above its {self.config.budget}",
                                 "Start a new run, or lower --budget")
        shared = STAGES[:STAGES.index("locate") + 1]
        if not all(self.is_done(stage) for stage in shared):
            raise RunFolderError(f"cannot fork {self.root}: it has not finished the locate stage",
                                 "Run it to the locate stage first")
        forked = Run(config, root, token=self.token, progress=self.progress, load_policy=self.load_policy)
        for name in ("problems", "reference", "quantized", "measure", "frontiers.jsonl", "diagnosis.json"):
            source = self.root / name
            target = forked.root / name
            if not source.exists() or target.exists():
                continue
            if source.is_dir():
                shutil.copytree(source, target, copy_function=_link_or_copy)
            else:
                _link_or_copy(source, target)
        manifest = forked.manifest
        for stage in shared:
            manifest["stages"][stage] = self.manifest["stages"][stage]
        forked._write_json(forked.root / MANIFEST, manifest)
        return forked

    def stage_seconds(self) -> dict[str, float]:
        return {name: entry["seconds"] for name, entry in self.manifest["stages"].items()}


# Each stage function reads finished artifacts from the run folder, writes its own outputs
# into ``tmp`` (named as they will be in the run folder) and returns a summary for the manifest.

def _save_problems(problems, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(p)) + "\n" for p in problems))


def load_problems(run: Run, split: str):
    from repair.steps import Problem

    lines = (run.root / "problems" / f"{split}.jsonl").read_text().splitlines()
    return [Problem(**{**json.loads(line), "steps": tuple(json.loads(line)["steps"])}) for line in lines]


def _prepare(run: Run, tmp: Path) -> dict:
    from repair.data import load_split
    from repair.sources import load_reference, resolve_model, save_reference

    config = run.config

    # Data first: a bad dataset fails in seconds, before the model download.
    test = load_split(config.dataset, "test", config.dataset_config, config.test_problems, run.token)
    train = load_split(config.dataset, "train", config.dataset_config,
                       config.train_problems + config.calibration_samples, run.token)
    held_out = {p.id for p in test.problems}
    pool = [p for p in train.problems if p.id not in held_out]
    overlap = len(train.problems) - len(pool)
    calibration, pool = pool[config.train_problems:], pool[:config.train_problems]
    _save_problems(pool, tmp / "problems" / "train.jsonl")
    _save_problems(calibration, tmp / "problems" / "calibration.jsonl")
    _save_problems(test.problems, tmp / "problems" / "test.jsonl")

    # The reference model, saved once as safetensors
    source = resolve_model(config.model, run.token, run.load_policy)
    model, tokenizer = load_reference(source, run.load_policy)
    save_reference(model, tokenizer, tmp / "reference")
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "model": {"spec": source.spec, "kind": source.kind, "hub_id": source.hub_id, "license": source.license,
                  "gguf_file": source.gguf_file, "parameters": parameters,
                  "architecture": type(model).__name__},
        "data": {"train": train.summary(), "test": test.summary(), "train_pool": len(pool),
                 "calibration": len(calibration), "removed_overlapping_test": overlap},
    }


def _quantize(run: Run, tmp: Path) -> dict:
    from repair.quantize import quantize

    config = run.config
    pulled = _pull_quantized(run, tmp / "quantized")
    if pulled is not None:
        return pulled
    calibration = load_problems(run, "calibration") if config.method != "rtn" else []
    result = quantize(run.reference_dir, tmp / "quantized", config.method, config.bits, config.group_size,
                      calibration, config.calibration_length, run.progress, config.ignore)
    size = sum(f.stat().st_size for f in (tmp / "quantized").glob("*.safetensors"))
    return {**asdict(result), "checkpoint_bytes": size, "pulled_from": None}


def _pull_quantized(run: Run, destination: Path) -> dict | None:
    """Download the checkpoint named by --quantized, or a matching one found on the Hub; None to quantize."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    from repair.sources import download_quantized, find_quantized

    config = run.config
    base = run.stage_summary("prepare")["model"]["hub_id"]
    candidates: list = []
    if config.quantized_repo:
        repo_id, reason = config.quantized_repo, "named with --quantized"
    elif not config.pull:
        log.info("Not searching the Hub for a quantized checkpoint (--no-pull)")
        return None
    elif base is None:
        log.info("The model has no Hub id, so there is no model tree to search; quantizing locally")
        return None
    elif constants.HF_HUB_OFFLINE:
        log.info("HF_HUB_OFFLINE is set; quantizing locally")
        return None
    else:
        try:
            found, candidates = find_quantized(base, config.method, config.bits, run.token)
        except (HfHubHTTPError, httpx.HTTPError, OSError) as error:
            log.warning("Could not search the Hub for quantized checkpoints of %s (%s); quantizing locally", base,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            return None
        for candidate in candidates:
            log.info("Hub checkpoint %s: %s", candidate.repo_id, "used" if candidate.usable else f"skipped, {candidate.reason}")
        if found is None:
            log.info("No usable %s %d-bit checkpoint of %s on the Hub; quantizing locally", config.method, config.bits, base)
            return None
        repo_id, reason = found.repo_id, f"found on the Hub: {found.reason}"

    start = time.perf_counter()
    revision = download_quantized(repo_id, destination, run.token)
    log.info("Using quantized checkpoint %s at %s (%s)", repo_id, revision, reason)
    size = sum(f.stat().st_size for f in destination.glob("*.safetensors"))
    return {"method": config.method, "bits": config.bits, "group_size": None, "group_size_reason": "set by the pulled checkpoint",
            "calibration_samples": 0, "seconds": round(time.perf_counter() - start, 1), "recipe": "",
            "checkpoint_bytes": size, "pulled_from": repo_id, "revision": revision, "reason": reason,
            "candidates": [asdict(c) for c in candidates]}


def _measure(run: Run, tmp: Path) -> dict:
    import gc

    from repair.measure import save_scores, score_traces, summarize
    from repair.quantize import load_quantized
    from repair.sources import load_tokenizer

    config = run.config
    tokenizer = load_tokenizer(run.reference_dir)
    splits = {"train": load_problems(run, "train"), "test": load_problems(run, "test")}
    summary: dict = {}
    for label, loader in (("reference", _load_reference_model), ("quantized", load_quantized)):
        model = loader(run.reference_dir if label == "reference" else run.quantized_dir)
        for split, problems in splits.items():
            scores = score_traces(model, tokenizer, problems, config.eval_batch_size, run.progress,
                                  desc=f"score {label} ({split})")
            save_scores(scores, tmp / "measure" / f"{label}_{split}.parquet")
            summary[f"{label}_{split}"] = summarize(scores)
        del model
        gc.collect()
    return summary


def _load_reference_model(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _locate(run: Run, tmp: Path) -> dict:
    from repair.locate import generate_rejected, locate_frontiers, summarize_frontiers
    from repair.measure import load_scores
    from repair.quantize import load_quantized
    from repair.sources import load_tokenizer

    tokenizer = load_tokenizer(run.reference_dir)
    problems = load_problems(run, "train")
    fp = load_scores(run.measure_dir / "reference_train.parquet")
    q = load_scores(run.measure_dir / "quantized_train.parquet")
    frontiers = locate_frontiers(tokenizer, problems, fp, q)

    # Only the frontiers that can enter the Silver Bullet set need the quantized model's own step.
    frontiers.sort(key=lambda f: f.step_index)
    generate_rejected(load_quantized(run.quantized_dir), tokenizer, {p.id: p for p in problems},
                      frontiers[:run.config.budget], run.config.eval_batch_size, progress=run.progress)
    (tmp / "frontiers.jsonl").write_text("".join(json.dumps(f.to_dict()) + "\n" for f in frontiers))

    measure = run.stage_summary("measure")
    diagnosis = {
        **summarize_frontiers(len(problems), frontiers),
        "reference": measure["reference_train"],
        "quantized": measure["quantized_train"],
        "examples": [f.to_dict() for f in frontiers[:10]],
    }
    (tmp / "diagnosis.json").write_text(json.dumps(diagnosis, indent=2))
    return {k: v for k, v in diagnosis.items() if k != "examples"}


def _silver(run: Run, tmp: Path) -> dict:
    from repair.locate import Frontier, generate_rejected
    from repair.quantize import load_quantized
    from repair.silver import build_records, save_records, select_targets
    from repair.sources import load_tokenizer

    config = run.config
    tokenizer = load_tokenizer(run.reference_dir)
    problems = load_problems(run, "train")
    frontiers = [Frontier(**json.loads(line)) for line in (run.root / "frontiers.jsonl").read_text().splitlines()]
    targets = select_targets(problems, frontiers, config.selection, config.budget, config.seed)

    # DPO needs the quantized model's own step at every target; the locate stage wrote it for frontiers only.
    missing = [t for t in targets if not t.rejected.strip()]
    if "dpo" in config.objective and missing:
        generate_rejected(load_quantized(run.quantized_dir), tokenizer, {p.id: p for p in problems}, missing,
                          config.eval_batch_size, progress=run.progress)

    held_out = {p.id for p in load_problems(run, "test")}
    records, summary = build_records(tokenizer, problems, targets, config.budget, config.selection, held_out)
    summary["frontiers_available"] = len(frontiers)
    if not records:
        from repair.errors import StageError

        scored = run.stage_summary("locate")["problems_scored"]
        raise StageError(
            f"no failure frontier in {scored} problems: the quantized model flips no decision token of the reference",
            "Score more problems with --train-problems, or quantize harder with fewer --bits", stage="silver")
    save_records(records, tmp / "silver", summary)
    return summary


def _restore(run: Run, tmp: Path) -> dict:
    from repair.restore import TrainSettings, train_adapter
    from repair.silver import load_records

    config = run.config
    settings = TrainSettings(lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                             learning_rate=config.learning_rate, epochs=config.epochs,
                             batch_size=config.batch_size, max_length=config.max_length, seed=config.seed,
                             dpo_beta=config.dpo_beta)
    records = load_records(run.silver_dir)
    summary = train_adapter(run.quantized_dir, records, tmp / "adapter", settings, run.progress, config.objective)
    if config.control:
        summary["control"] = train_adapter(run.reference_dir, records, tmp / "control-adapter", settings, run.progress,
                                           config.objective, base="reference")
    return summary


def _verify(run: Run, tmp: Path) -> dict:
    import gc

    from peft import PeftModel

    from repair.measure import load_scores, save_scores, score_traces, text_nll
    from repair.quantize import load_quantized
    from repair.restore import load_repaired
    from repair.sources import load_tokenizer
    from repair.verify import compare

    config = run.config
    tokenizer = load_tokenizer(run.reference_dir)
    problems = load_problems(run, "test")

    # The repaired model (and the control) on the held-out problems, teacher forced
    repaired = load_repaired(run.quantized_dir, run.adapter_dir)
    r = score_traces(repaired, tokenizer, problems, config.eval_batch_size, run.progress, desc="score repaired (test)")
    save_scores(r, tmp / "measure" / "repaired_test.parquet")
    control = None
    if config.control:
        control_model = PeftModel.from_pretrained(_load_reference_model(run.reference_dir), str(run.root / "control-adapter"))
        control = score_traces(control_model.eval(), tokenizer, problems, config.eval_batch_size, run.progress,
                               desc="score control (test)")
        save_scores(control, tmp / "measure" / "control_test.parquet")
    result = compare(load_scores(run.measure_dir / "reference_test.parquet"),
                     load_scores(run.measure_dir / "quantized_test.parquet"), r, control)

    # Non-math text, so that a repair that damages general language shows
    if config.general_text:
        loaders = {"reference": lambda: _load_reference_model(run.reference_dir),
                   "quantized": lambda: load_quantized(run.quantized_dir), "repaired": lambda: repaired}
        if control is not None:
            loaders["control"] = lambda: control_model
        general = {name: text_nll(load(), tokenizer, Path(config.general_text), config.eval_batch_size)
                   for name, load in loaders.items()}
        general["repaired_vs_quantized"] = round(general["repaired"]["nll"] / general["quantized"]["nll"] - 1, 4)
        result["general_text"] = {"file": Path(config.general_text).name, **general}
        gc.collect()

    # Generated accuracy, when the full-precision model's own accuracy makes it meaningful
    if config.generated_problems:
        result["generated"] = _generated_accuracy(run, tokenizer, problems[:config.generated_problems], repaired)

    # The merged checkpoint: adapter folded in, quantized again with the same recipe
    if config.merge:
        result["merged"] = _merge_and_score(run, tmp, tokenizer, problems)

    result["held_out_problems"] = [p.id for p in problems]
    (tmp / "verify.json").write_text(json.dumps(result, indent=2))
    return {k: v for k, v in result.items() if k != "held_out_problems"}


def _merge_and_score(run: Run, tmp: Path, tokenizer, problems) -> dict:
    """Write ``merged/`` (the adapter folded into the weights, re-quantized) and return its held-out figures."""
    from repair.locate import find_flips
    from repair.measure import load_scores, save_scores, score_traces, summarize
    from repair.quantize import load_quantized, quantize
    from repair.restore import merge_adapter

    config = run.config
    quantized = run.stage_summary("quantize")
    dense = tmp / ".merged-dense"
    merge_adapter(run.quantized_dir, run.adapter_dir, dense)
    calibration = load_problems(run, "calibration") if config.method != "rtn" else []
    result = quantize(dense, tmp / "merged", config.method, config.bits, quantized.get("group_size") or config.group_size,
                      calibration, config.calibration_length, run.progress, config.ignore)
    shutil.rmtree(dense)

    scores = score_traces(load_quantized(tmp / "merged"), tokenizer, problems, config.eval_batch_size, run.progress,
                          desc="score merged (test)")
    save_scores(scores, tmp / "measure" / "merged_test.parquet")
    fp = load_scores(run.measure_dir / "reference_test.parquet")
    figures = summarize(scores)
    return {**figures, "flips": sum(len(find_flips(a, b)) for a, b in zip(fp, scores)),
            "quantize_seconds": result.seconds,
            "checkpoint_bytes": sum(f.stat().st_size for f in (tmp / "merged").glob("*.safetensors"))}


# Below this share of problems solved by the full-precision model, accuracy differences between the
# models are a handful of problems and say nothing, so the other models are not generated.
MIN_MEANINGFUL_ACCURACY = 0.2


def _generated_accuracy(run: Run, tokenizer, problems, repaired) -> dict:
    """Solve ``problems`` by greedy generation and grade the answers (strict and flexible extractors)."""
    from repair.generate import generate_solutions
    from repair.grading import grade
    from repair.quantize import load_quantized

    def solve(model, label: str) -> dict:
        generations, seconds = generate_solutions(model, tokenizer, problems, batch_size=run.config.eval_batch_size,
                                                  progress=run.progress, desc=f"generate {label} (test)")
        grades = [grade(problem.answer, generation.text) for problem, generation in zip(problems, generations)]
        return {"strict": round(sum(g["strict"] for g in grades) / len(grades), 4),
                "flexible": round(sum(g["flexible"] for g in grades) / len(grades), 4),
                "seconds": round(seconds, 1)}

    result: dict = {"problems": len(problems), "reference": solve(_load_reference_model(run.reference_dir), "reference")}
    if result["reference"]["flexible"] < MIN_MEANINGFUL_ACCURACY:
        result["skipped"] = (f"the full-precision model solves {result['reference']['flexible']:.0%} of the problems, "
                             f"below {MIN_MEANINGFUL_ACCURACY:.0%}, so accuracy cannot show a repair")
        log.info("Generated accuracy: %s", result["skipped"])
        return result
    result["quantized"] = solve(load_quantized(run.quantized_dir), "quantized")
    result["repaired"] = solve(repaired, "repaired")
    return result
