"""The ``repair`` command line: one command for the whole job, one per stage.

Results go to stdout; logs and progress bars go to stderr. Errors end with a one-line
message and a non-zero exit code; set REPAIR_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import click

from repair.config import METHODS, OBJECTIVES, SELECTIONS, SUPPORTED_BITS, PublishConfig, RunConfig
from repair.errors import RepairError

log = logging.getLogger("repair")


def _run_options(command):
    """Add the options that define a run to a Click command."""
    options = [
        click.argument("model"),
        click.option("--bits", type=int, required=True,
                     help=f"Weight bit-width of the quantized model: {', '.join(map(str, SUPPORTED_BITS))}."),
        click.option("--method", type=click.Choice(METHODS), default="gptq", show_default=True,
                     help="Quantization method."),
        click.option("--pull/--no-pull", default=True, show_default=True,
                     help="Use a matching quantized checkpoint of the same base from the Hub when one exists."),
        click.option("--quantized", "quantized_repo", default=None,
                     help="Hub id of a quantized checkpoint to use instead of searching or quantizing."),
        click.option("--group-size", type=int, default=None,
                     help="Quantization group size; by default the largest of 128, 64, 32, 16 that divides every layer."),
        click.option("--ignore", multiple=True, default=("lm_head",), show_default=True,
                     help="Layer left unquantized (repeat for more): a full module name, a class name, or re:PATTERN."),
        click.option("--dataset", default="openai/gsm8k", show_default=True,
                     help="Hub dataset id, or a local .jsonl/.json/.parquet file or a folder with train and test files."),
        click.option("--dataset-config", default=None, help="Hub dataset configuration, for example 'main' for openai/gsm8k."),
        click.option("--calibration-samples", type=int, default=RunConfig.calibration_samples, show_default=True,
                     help="Training-split problems used to calibrate GPTQ, AWQ and SmoothQuant."),
        click.option("--calibration-length", type=int, default=RunConfig.calibration_length, show_default=True,
                     help="Maximum tokens per calibration problem."),
        click.option("--train-problems", type=int, default=RunConfig.train_problems, show_default=True,
                     help="Training-split problems scored to locate failures."),
        click.option("--test-problems", type=int, default=RunConfig.test_problems, show_default=True,
                     help="Held-out test-split problems used for verification."),
        click.option("--budget", type=int, default=332, show_default=True, help="Maximum Silver Bullet records."),
        click.option("--selection", type=click.Choice(SELECTIONS), default="frontier", show_default=True,
                     help="Steps to train on: first faulty steps, random steps of the same problems (the baseline), or all steps."),
        click.option("--objective", type=click.Choice(OBJECTIVES), default="sft", show_default=True,
                     help="sft: loss on the target step; dpo: target step over the quantized model's own step; sft+dpo: both in turn."),
        click.option("--dpo-beta", type=float, default=RunConfig.dpo_beta, show_default=True,
                     help="DPO beta: how far the adapter may move from the quantized model."),
        click.option("--control", is_flag=True,
                     help="Also train the same adapter on the full-precision model, to separate repair from domain adaptation."),
        click.option("--merge", is_flag=True,
                     help="Also fold the adapter into the weights, quantize again with the same recipe, and verify that checkpoint."),
        click.option("--generated-problems", type=int, default=RunConfig.generated_problems, show_default=True,
                     help="Held-out problems solved by generation to compare accuracy (0 skips it)."),
        click.option("--general-text", type=click.Path(dir_okay=False), default=None,
                     help="Plain-text file of non-math text whose NLL is compared across the models."),
        click.option("--epochs", type=float, default=RunConfig.epochs, show_default=True, help="Training passes over the records."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
        click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                     help="Run folder; by default repair-runs/<model>-<method>-w<bits>-<hash>. Rerunning resumes it."),
        click.option("--token", default=None, help="Hub token; by default HF_TOKEN or the saved login. Never written anywhere."),
        click.option("--dry-run", is_flag=True, help="Print the recipe, the checkpoint that would be pulled, and memory and disk estimates, then stop."),
        click.option("--trust-remote-code", is_flag=True,
                     help="Run Python code shipped with the model (auto_map in its config.json). Read it first."),
        click.option("--allow-pickle", is_flag=True,
                     help="Load .bin/.pt/.pth/.ckpt weights, whose unpickling can run code, when no safetensors exist."),
        click.option("--skip-memory-check", is_flag=True,
                     help="Load the model even when its float32 weights, held twice, exceed the available memory."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _build_run(kwargs: dict):
    from repair.pipeline import Run
    from repair.progress import TqdmProgress
    from repair.sources import LoadPolicy

    token = kwargs.pop("token")
    run_dir = kwargs.pop("run_dir")
    config = RunConfig(
        model=kwargs.pop("model"), bits=kwargs.pop("bits"), method=kwargs.pop("method"),
        group_size=kwargs.pop("group_size"), ignore=list(kwargs.pop("ignore")), pull=kwargs.pop("pull"), quantized_repo=kwargs.pop("quantized_repo"),
        dataset=kwargs.pop("dataset"), dataset_config=kwargs.pop("dataset_config"),
        calibration_samples=kwargs.pop("calibration_samples"), calibration_length=kwargs.pop("calibration_length"),
        train_problems=kwargs.pop("train_problems"),
        test_problems=kwargs.pop("test_problems"), budget=kwargs.pop("budget"), epochs=kwargs.pop("epochs"),
        selection=kwargs.pop("selection"), objective=kwargs.pop("objective"), dpo_beta=kwargs.pop("dpo_beta"),
        control=kwargs.pop("control"), merge=kwargs.pop("merge"), general_text=kwargs.pop("general_text"),
        generated_problems=kwargs.pop("generated_problems"),
        seed=kwargs.pop("seed"),
    )
    if kwargs.pop("dry_run", False):
        from repair.quantize import dry_run_report

        click.echo(dry_run_report(config, token))
        sys.exit(0)
    policy = LoadPolicy(trust_remote_code=kwargs.pop("trust_remote_code"), allow_pickle=kwargs.pop("allow_pickle"),
                        check_memory=not kwargs.pop("skip_memory_check"))
    run = Run(config, run_dir, token=token, progress=TqdmProgress(disable=bool(os.environ.get("REPAIR_NO_PROGRESS"))),
              load_policy=policy)
    log.info("Run folder: %s", run.root)
    return run, token


def _handle_errors(command):
    """Turn a ``RepairError`` into a one-line message and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RepairError as error:
            if os.environ.get("REPAIR_DEBUG"):
                raise
            click.echo(f"Error: {error.message}", err=True)
            sys.exit(error.exit_code)

    return wrapper


@click.group()
@click.version_option(package_name="repair")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def cli(verbose: bool) -> None:
    """Repair the math reasoning of a quantized language model and publish the fix.

    \b
    Example: the whole job on the built-in model, written to disk instead of the Hub:
        repair push smollm2-135m --bits 3 --dataset ./gsm8k --output out --no-push
    """
    _configure_logging(verbose)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    if not verbose:
        import warnings

        import transformers

        transformers.logging.set_verbosity_error()
        warnings.filterwarnings("ignore")
        for noisy in ("httpx", "urllib3", "datasets", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@cli.command()
@_run_options
@click.option("--namespace", default=None, help="Hub user or organisation to publish under; by default the token's user.")
@click.option("--name", "name_prefix", default=None, help="Repo name stem; by default <model>-<method>-w<bits>.")
@click.option("--private", is_flag=True, help="Create the repos as private.")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Also write the three repo folders here.")
@click.option("--push/--no-push", default=True, show_default=True, help="Upload to the Hub.")
@_handle_errors
def push(namespace, name_prefix, private, output, push, **kwargs):
    """Run every stage and publish the quantized model, the Silver Bullet dataset and the adapter.

    \b
    Examples:
        repair push smollm2-135m --bits 3 --dataset openai/gsm8k --dataset-config main
        repair push smollm2-135m --bits 3 --dataset ./gsm8k --output out --no-push
    """
    from repair.publish import preflight, publish

    # Check publishing options and the token's rights before hours of work
    publish_config = PublishConfig(namespace=namespace, private=private, push=push, output=output,
                                   token=kwargs["token"], name_prefix=name_prefix)
    if not kwargs.get("dry_run"):
        preflight(publish_config)
    run, _ = _build_run(kwargs)
    run.run("verify")
    result = publish(run, publish_config, command=_command_line())
    _print_summary(run, result)


def _command_line() -> str:
    """Return the command as typed, without the token."""
    args = list(sys.argv[1:])
    for index, arg in enumerate(args):
        if arg == "--token" and index + 1 < len(args):
            args[index + 1] = "***"
        elif arg.startswith("--token="):
            args[index] = "--token=***"
    return "repair " + shlex.join(args)


def _stage_command(until: str, help_text: str):
    @cli.command(name={"locate": "diagnose", "restore": "train", "verify": "verify"}[until],
                 help=help_text)
    @_run_options
    @_handle_errors
    def command(**kwargs):
        run, _ = _build_run(kwargs)
        run.run(until)  # type: ignore[arg-type]
        _print_summary(run, None)

    return command


_stage_command("restore", "Run every stage up to training the LoRA adapter on the Silver Bullet records.")
_stage_command("verify", "Run every stage up to the held-out comparison of full-precision, quantized and repaired models.")


@cli.command()
@_run_options
@click.option("--eval-dataset", default=None,
              help="Problems the models solve for the report: GSM8K, MATH-500, AIME, MAWPS or any dataset with "
                   "question and answer columns, as a Hub id or local file or folder; by default --dataset.")
@click.option("--split", default="test", show_default=True, help="Split of the evaluation dataset.")
@click.option("--question-field", default=None, help="Column of the evaluation dataset with the question.")
@click.option("--answer-field", default=None, help="Column of the evaluation dataset with the final answer.")
@click.option("--limit", type=int, default=200, show_default=True, help="Problems both models solve.")
@click.option("--reference", type=click.Choice(["fp", "gold", "auto"]), default="auto", show_default=True,
              help="Reference solution: the full-precision model's own correct one, the dataset's, or fp where it "
                   "solved the problem and gold elsewhere.")
@click.option("--few-shot", type=int, default=0, show_default=True, help="Worked examples in the prompt.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Maximum generated tokens per solution.")
@click.option("--generation-batch-size", type=int, default=16, show_default=True, help="Problems generated together.")
@click.option("--judge", default=None,
              help="Model that judges wrong solutions the rules cannot place: a local folder, .gguf, alias or Hub id "
                   "loaded here, or the http(s) URL of an OpenAI-compatible server (TGI, vLLM, an Inference Endpoint).")
@click.option("--judges", type=int, default=1, show_default=True, help="Judge votes per decision; the majority wins.")
@click.option("--judge-api", is_flag=True,
              help="Send the judge's questions for the Hub model --judge to the Hugging Face Inference API "
                   "(Inference Providers, billed to the token's owner) instead of downloading it. Implied by a URL.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Folder that receives diagnosis.json and report.html; by default <run folder>/report.")
@_handle_errors
def diagnose(eval_dataset, split, question_field, answer_field, limit, reference, few_shot, max_new_tokens,
             generation_batch_size, judge, judges, judge_api, output, **kwargs):
    """Score both models by teacher forcing, generate solutions, find each first faulty step, and write a report.

    \b
    Examples:
        repair diagnose smollm2-135m --bits 3 --dataset ./gsm8k --limit 200 --output diagnosis
        repair diagnose smollm2-135m --bits 3 --dataset ./gsm8k --judge Qwen/Qwen2.5-7B-Instruct --judge-api --judges 3
        repair diagnose smollm2-135m --bits 3 --dataset ./gsm8k --judge http://127.0.0.1:8080/v1
    """
    from repair.diagnose import DiagnoseConfig, diagnose_run

    settings = DiagnoseConfig(dataset=eval_dataset or kwargs["dataset"], split=split, question_field=question_field,
                              answer_field=answer_field, dataset_config=kwargs["dataset_config"], limit=limit,
                              reference=reference, few_shot=few_shot, max_new_tokens=max_new_tokens,
                              batch_size=generation_batch_size, judge=judge, judges=judges, judge_api=judge_api)
    run, _ = _build_run(kwargs)
    diagnosis = diagnose_run(run, settings, output)
    _print_summary(run, None)
    accuracy = diagnosis["accuracy"]
    click.echo(f"generated accuracy (strict / flexible): full precision {accuracy['fp']['strict']:.1%} / "
               f"{accuracy['fp']['flexible']:.1%}, quantized {accuracy['q']['strict']:.1%} / {accuracy['q']['flexible']:.1%}")
    click.echo(f"first faulty steps: {diagnosis['fault_histogram']}; error types: {diagnosis['error_types']}")
    click.echo(f"report: {(output or run.root / 'report') / 'report.html'}")


@cli.command()
@_run_options
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Folder that receives the checkpoint.")
@_handle_errors
def quantize(output, **kwargs):
    """Quantize a model with llm-compressor and write the compressed-tensors checkpoint to OUTPUT.

    \b
    Example:
        repair quantize smollm2-135m --method gptq --bits 4 --dataset ./gsm8k --output q4
    """
    run, _ = _build_run(kwargs)
    run.run("quantize")
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(run.quantized_dir, output)
    summary = run.stage_summary("quantize")
    click.echo(f"Wrote {summary['method']} W{summary['bits']} (group size {summary['group_size']}) to {output}")


@cli.command()
@click.option("--token", default=None, help="Hub token to check; by default HF_TOKEN or the saved login.")
def doctor(token):
    """Print library versions, the device, what the Hub token may do (never the token), free disk and backends."""
    from huggingface_hub import get_token

    from repair.doctor import report

    for item, finding in report(token or get_token()):
        click.echo(f"{item:<28}{finding}")


def _print_summary(run, result: dict | None) -> None:
    """Print one table of the run's figures and stage times on stdout."""
    stages = run.manifest["stages"]
    lines = []
    if "verify" in stages:
        models = stages["verify"]["summary"]["models"]
        lines.append(f"{'model':<16}{'held-out NLL':>14}{'top-1 agreement':>18}")
        for name in ("reference", "quantized", "repaired"):
            lines.append(f"{name:<16}{models[name]['nll']:>14.4f}{models[name]['top1_agreement']:>18.4f}")
        if "control" in models:
            lines.append(f"{'control':<16}{models['control']['nll']:>14.4f}{models['control']['top1_agreement']:>18.4f}")
        gap = stages["verify"]["summary"]["gap_closed"]
        lines.append(f"gap closed: {gap:.1%}" if gap is not None else "gap closed: n/a (quantized model is not worse)")
        generated = stages["verify"]["summary"].get("generated")
        if generated:
            lines.append("generated accuracy (flexible): " + ", ".join(
                f"{name} {generated[name]['flexible']:.0%}" for name in ("reference", "quantized", "repaired")
                if name in generated) + (f" ({generated['skipped']})" if "skipped" in generated else "")
                + f" on {generated['problems']} problems")
        merged = stages["verify"]["summary"].get("merged")
        if merged:
            lines.append(f"{'merged':<16}{merged['nll']:>14.4f}{merged['top1_agreement']:>18.4f}")
        general = stages["verify"]["summary"].get("general_text")
        if general:
            lines.append("non-math text NLL: " + ", ".join(
                f"{name} {general[name]['nll']:.4f}" for name in ("reference", "quantized", "repaired", "control")
                if name in general) + f" (repaired vs quantized {general['repaired_vs_quantized']:+.1%})")
    elif "measure" in stages:
        measured = stages["measure"]["summary"]
        lines.append(f"{'model':<16}{'NLL (train)':>14}{'top-1 agreement':>18}")
        for name in ("reference", "quantized"):
            figures = measured[f"{name}_train"]
            lines.append(f"{name:<16}{figures['nll']:>14.4f}{figures['top1_agreement']:>18.4f}")
    if "locate" in stages:
        located = stages["locate"]["summary"]
        lines.append(f"problems with a frontier: {located['problems_with_frontier']} of {located['problems_scored']}; "
                     f"frontier steps: {located['frontier_histogram']}")
    lines.append("stage seconds: " + ", ".join(f"{name} {entry['seconds']}" for name, entry in stages.items()))
    lines.append(f"run folder: {run.root}")
    if result is not None:
        for kind, repo_id in result["repos"].items():
            where = result.get("urls", {}).get(kind) or result.get("folders", {}).get(kind)
            lines.append(f"{kind}: {repo_id} -> {where}")
    click.echo("\n".join(lines))


# The web app and its Space
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but a loopback address lets other machines run jobs here.")
@click.option("--port", type=int, default=7860, show_default=True, help="Port to listen on.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Folder that receives one run folder per job; by default repair-runs/ui.")
def ui(host, port, work_dir):
    """Start the web app, which runs the same job as `repair push` from a browser.

    \b
    Example:
        repair ui --port 7860
    Then open http://127.0.0.1:7860 and paste a Hub token with write access.
    """
    from ui.app import build_ui, launch_options, running_in_space

    local = host in _LOOPBACK_HOSTS
    if not local and not running_in_space():
        log.warning("Binding to %s outside a Space: anyone who reaches this port can run jobs on this machine. "
                    "Local model and dataset paths are turned off; bind to 127.0.0.1 unless you need this", host)
    demo = build_ui(work_dir=work_dir, allow_local_paths=local and not running_in_space())
    demo.launch(server_name=host, server_port=port, **launch_options())


@cli.group()
def space():
    """Deploy the web app as a Hugging Face Space."""


@space.command("deploy")
@click.argument("name")
@click.option("--namespace", default=None, help="User or organisation that owns the Space; by default the token's user.")
@click.option("--private", is_flag=True, help="Create the Space as private.")
@click.option("--token", default=None, help="Hub token with write access; by default HF_TOKEN or the saved login.")
@click.option("--requirement", default=None,
              help="requirements.txt line that installs repair on the Space, for example "
                   "'repair @ git+https://github.com/OWNER/repair@v0.1.0'; by default repair==<this version>.")
@_handle_errors
def deploy(name, namespace, private, token, requirement):
    """Create or update the Space NAME with the app, in one commit, and print its URL.

    \b
    Example:
        repair space deploy repair-app --requirement "repair @ git+https://github.com/OWNER/repair@v0.1.0"
    """
    from huggingface_hub import get_token

    from repair.space import deploy_space

    click.echo(deploy_space(name, token or get_token(), namespace=namespace, private=private, requirement=requirement))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
