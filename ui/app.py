"""The Gradio app: the whole job of ``repair push`` from a web page, one job at a time.

``build_ui()`` only builds the app. ``repair ui`` and the Space's ``app.py`` launch it. A job
runs the same library calls as the CLI: ``Run(...).run(stage)`` for each stage, then
``publish()``, in a run folder of its own under the app's work folder.

Sign-in: in a Space, visitors sign in with Hugging Face (OAuth) and their token is used for their
own job only. Elsewhere the app shows a required Hub token field and no sign-in button. Outside a
Space, Gradio would mount a mock login that hands the server's own Hub account to every visitor.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import threading
import time
import uuid
from dataclasses import MISSING, fields
from pathlib import Path

import gradio as gr
import pandas as pd

from repair.config import METHODS, OBJECTIVES, SELECTIONS, STAGES, SUPPORTED_BITS, PublishConfig, RunConfig
from repair.errors import ConfigError, HubError, RepairError
from repair.sources import BUILTIN_MODELS

log = logging.getLogger(__name__)

# Jobs that may wait behind the running one. Later requests are rejected with "queue full",
# which is better than a wait of many hours: the README gives about 25 minutes on 2 CPU cores
# for `repair push` on the built-in model.
QUEUE_MAX_SIZE = 8
SEARCH_RESULTS = 20  # models listed by the Hub search helper
# Searches served at once. Each event has its own concurrency limit in Gradio, so searches do
# not wait for the running job.
SEARCH_CONCURRENCY = 4
DEFAULT_BITS = 4
DEFAULT_DATASET_CONFIG = "main"  # the configuration of openai/gsm8k, the default dataset
DEFAULT_WORK_DIR = Path("repair-runs") / "ui"
BUILTIN_ALIAS = "smollm2-135m"

MODEL_LABELS = {"reference": "full precision", "quantized": "quantized", "repaired": "repaired"}
RESULT_COLUMNS = ["model", "held-out NLL", "top-1 agreement", "problems", "tokens"]
EXAMPLE_COLUMNS = ["problem id", "step", "flip token", "chosen", "rejected", "error type"]
# RunConfig fields that `repair push` has a flag for, so the command on the cards reproduces them.
CLI_FLAGS = {"group_size": "--group-size", "calibration_samples": "--calibration-samples",
             "train_problems": "--train-problems", "test_problems": "--test-problems",
             "budget": "--budget", "selection": "--selection", "objective": "--objective", "epochs": "--epochs",
             "seed": "--seed"}

# The x-axis order of the frontier chart, which sorts its string labels alphabetically otherwise.
# Steps past the list's end follow it; GSM8K solutions have far fewer steps.
FRONTIER_STEP_ORDER = [str(step) for step in range(1, 101)]

CSS = "#status {min-height: 2em}"


def running_in_space() -> bool:
    """Return whether this process runs in a Hugging Face Space.

    This is Gradio's own test (``gradio.utils.get_space``): with SPACE_ID alone Gradio still
    mounts its mock login, so SPACE_ID alone must not count as a Space here either.
    """
    return os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))


def launch_options() -> dict:
    """Return the ``launch()`` arguments that style the app (Gradio 6 takes theme and css there)."""
    return {"theme": gr.themes.Soft(), "css": CSS}


def check_run_defaults(run_defaults: dict) -> dict:
    """Return ``run_defaults`` after checking that every key is a RunConfig field other than ``model``."""
    names = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(run_defaults) - names)
    if unknown:
        raise ValueError(f"run_defaults has keys that are not RunConfig fields: {', '.join(unknown)}")
    if "model" in run_defaults:
        raise ValueError("run_defaults cannot set the model; the form does")
    return dict(run_defaults)


def field_default(name: str, run_defaults: dict):
    """Return the initial form value of a RunConfig field: run_defaults first, then RunConfig's default."""
    if name in run_defaults:
        return run_defaults[name]
    default = next(f.default for f in fields(RunConfig) if f.name == name)
    return None if default is MISSING else default


def field_help(name: str) -> str:
    """Return the help text of a RunConfig field, which the CLI's options also describe."""
    return next(f.metadata.get("help", "") for f in fields(RunConfig) if f.name == name)


def parse_whole_number(value, flag: str) -> int | None:
    """Return ``value`` as an int, None when empty; raise ConfigError naming ``flag`` otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise ConfigError(f"{flag} {value!r} is not a whole number", f"Pass a whole number to {flag}")
    return int(number)


def reject_local_path(value: str, what: str) -> None:
    """Raise ConfigError if ``value`` names a file or folder on this server rather than a Hub id."""
    if value.startswith(("/", ".", "~", "\\")) or Path(value).expanduser().exists():
        raise ConfigError(f"the {what} {value!r} is a local path, which this app does not accept",
                          f"Give a Hub {what} id such as org/name")


def equivalent_command(config: RunConfig, publish_config: PublishConfig) -> str:
    """Return the ``repair push`` command that reproduces a job, for the cards. It never contains a token."""
    args = ["repair", "push", config.model, "--bits", str(config.bits), "--method", config.method,
            "--dataset", config.dataset]
    if config.dataset_config:
        args += ["--dataset-config", config.dataset_config]
    for name, flag in CLI_FLAGS.items():
        value = getattr(config, name)
        if value != field_default(name, {}):
            args += [flag, str(value)]
    if publish_config.namespace:
        args += ["--namespace", publish_config.namespace]
    if publish_config.private:
        args.append("--private")
    command = shlex.join(args)

    # Settings the app sets but the CLI has no flag for, so that the card does not overstate the command
    others = [f"{f.name}={getattr(config, f.name)}" for f in fields(RunConfig)
              if f.name not in CLI_FLAGS and f.default is not MISSING and getattr(config, f.name) != f.default
              and f.name not in ("method", "dataset", "dataset_config")]
    if others:
        command += f" (in the web app, with {', '.join(others)})"
    return command


def results_table(verified: dict) -> pd.DataFrame:
    """Return one row per model (full precision, quantized, repaired) of the held-out figures."""
    rows = []
    for key, label in MODEL_LABELS.items():
        figures = verified["models"][key]
        rows.append([label, figures["nll"], figures["top1_agreement"], figures["problems"], figures["tokens"]])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def nll_chart(verified: dict) -> pd.DataFrame:
    return pd.DataFrame({"model": list(MODEL_LABELS.values()),
                         "held-out NLL": [verified["models"][key]["nll"] for key in MODEL_LABELS]})


def frontier_chart(located: dict) -> pd.DataFrame:
    """Return the number of training problems per frontier step, for every step from 1 to the last one.

    Steps are strings so that the chart draws one bar per step; the chart's ``sort`` puts them
    in numeric order.
    """
    counts = {int(step): count for step, count in located["frontier_histogram"].items()}
    steps = range(1, max(counts, default=0) + 1)
    return pd.DataFrame({"frontier step": [str(step) for step in steps],
                         "problems": [counts.get(step, 0) for step in steps]})


def examples_table(diagnosis: dict) -> pd.DataFrame:
    """Return the example failures of diagnosis.json, with 1-based step numbers."""
    rows = [[example["problem_id"], example["step_index"] + 1, example["flip_token"], example["chosen"],
             example["rejected"], example["error_type"]]
            for example in diagnosis.get("examples", [])]
    return pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)


def links_markdown(published: dict) -> str:
    """Return Markdown links to the three published repos."""
    titles = {"quantized": "Quantized checkpoint", "dataset": "Silver Bullet dataset", "adapter": "LoRA adapter"}
    lines = []
    for kind, title in titles.items():
        repo_id = published["repos"][kind]
        url = published.get("urls", {}).get(kind)
        lines.append(f"- {title}: [{repo_id}]({url})" if url else f"- {title}: {repo_id}")
    return "\n".join(lines)


def summary_markdown(run, seconds: float) -> str:
    """Return a few lines on the finished job: the gap closed, flips, frontiers and time."""
    verified = run.stage_summary("verify")
    located = run.stage_summary("locate")
    flips = verified["flips"]
    gap = verified["gap_closed"]
    gap_text = f"{gap:.1%}" if gap is not None else "n/a (the quantized model is not worse than full precision)"
    return "\n".join([
        f"**Finished in {seconds:.0f} s.** Share of the quantized-to-full-precision NLL gap closed: {gap_text}.",
        f"Held-out flips: {flips['quantized_flips']} after quantization, {flips['repaired_flips']} after the repair "
        f"({flips['flips_restored']} restored, {flips['flips_caused']} caused).",
        f"Training problems with a failure frontier: {located['problems_with_frontier']} of {located['problems_scored']}.",
    ])


class JobCancelled(Exception):
    """Raised inside a job's progress callback after its visitor pressed Cancel."""


class JobProgress:
    """The pipeline's ProgressCallback for one job: forwards to ``gr.Progress`` and stops a cancelled job.

    Gradio's ``cancels=`` stops waiting for a running handler but cannot stop its thread, so the
    job checks its cancel flag at every progress report and between stages.
    """

    def __init__(self, progress: gr.Progress, cancelled: threading.Event):
        self.progress = progress
        self.cancelled = cancelled
        self.stage = ""  # prefix of every description, such as "stage 3 of 7 (measure)"

    def __call__(self, desc: str, completed: int, total: int | None) -> None:
        self.check_cancelled()
        label = f"{self.stage}: {desc}" if self.stage else desc
        if total:
            self.progress(completed / total, desc=label)
        else:
            self.progress((completed, None), desc=label)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled


class RepairApp:
    """The app's handlers and what they share: the settings, the job lock and the cancel flags."""

    def __init__(self, run_defaults: dict | None = None, work_dir: Path | None = None, *,
                 in_space: bool | None = None, allow_local_paths: bool | None = None,
                 keep_run_folders: bool | None = None):
        self.in_space = running_in_space() if in_space is None else in_space
        self.run_defaults = check_run_defaults(run_defaults or {})
        self.work_dir = Path(work_dir) if work_dir is not None else DEFAULT_WORK_DIR
        # A Space's visitors must not read the server's files through the model or dataset fields.
        self.allow_local_paths = not self.in_space if allow_local_paths is None else allow_local_paths
        # A Space's disk is small and wiped on restart, and the results are on the Hub by then.
        self.keep_run_folders = not self.in_space if keep_run_folders is None else keep_run_folders
        self._job_lock = threading.Lock()
        self._cancel_flags: dict[str, threading.Event] = {}  # by browser session

    # Form help
    def default_model(self) -> str:
        # A Space cannot install the built-in model's package: it needs pip's --no-deps.
        return BUILTIN_MODELS[BUILTIN_ALIAS].hub_id if self.in_space else BUILTIN_ALIAS

    def model_help(self) -> str:
        if self.in_space:
            return "Hub model id, such as HuggingFaceTB/SmolLM2-135M-Instruct"
        text = f"Hub model id, or the built-in alias {BUILTIN_ALIAS}"
        return text + (", or a local folder or .gguf file" if self.allow_local_paths else "")

    # Sign-in and tokens
    def visitor_token(self, token_text: str | None, oauth_token: gr.OAuthToken | None) -> str | None:
        """Return the visitor's own token: the OAuth token in a Space, the token field elsewhere.

        Never the server's token (HF_TOKEN or the saved login): in a Space that is the owner's.
        """
        if self.in_space:
            return oauth_token.token if oauth_token is not None else None
        return (token_text or "").strip() or None

    def require_token(self, token_text: str | None, oauth_token: gr.OAuthToken | None) -> str:
        token = self.visitor_token(token_text, oauth_token)
        if token is not None:
            return token
        if self.in_space:
            raise HubError("you are not signed in",
                           "Sign in with Hugging Face: the repos are created with your account")
        raise HubError("no Hub token given", "Paste a Hub token with write access into the Hub token field")

    def describe_visitor(self, profile: gr.OAuthProfile | None) -> str:
        """Return the Markdown line above the form: whose account receives the repos."""
        if not self.in_space:
            return ("Paste a Hub token with write access. It is used for this job's downloads and uploads "
                    "and is never stored.")
        if profile is None:
            return "Sign in with Hugging Face to run a job: the three repos are created with your account."
        return (f"Signed in as **{profile.username}**. The repos go to your account unless you set a namespace "
                f"you can write to.")

    # Hub search
    def search_models(self, query: str, token_text: str | None, oauth_token: gr.OAuthToken | None) -> gr.Dropdown:
        """List Hub models whose id contains ``query``, most downloaded first, in the model dropdown."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        query = (query or "").strip()
        if not query:
            raise gr.Error("Type part of a model name to search for, for example SmolLM2.", print_exception=False)

        # False, not None: None would send the server's own token
        token = self.visitor_token(token_text, oauth_token) or False
        try:
            models = list(HfApi().list_models(search=query, sort="downloads", limit=SEARCH_RESULTS, token=token))
        except (HfHubHTTPError, OSError) as error:
            log.warning("Model search for %r failed: %s", query, error)
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise gr.Error(f"The Hub search for {query!r} failed: {first_line}. Type the model id instead.",
                           print_exception=False) from error

        ids = [model.id for model in models]
        if not ids:
            gr.Warning(f"No model on the Hub matches {query!r}.")
        return gr.Dropdown(choices=ids, value=ids[0] if ids else None)

    # Jobs
    def build_config(self, model: str, bits, method: str, dataset: str, dataset_config: str | None,
                     budget, selection: str | None = None, objective: str | None = None) -> RunConfig:
        """Return the RunConfig of a job: the form's values over run_defaults over RunConfig's defaults."""
        model = (model or "").strip()
        dataset = (dataset or "").strip() or field_default("dataset", self.run_defaults)
        if not self.allow_local_paths:
            reject_local_path(model, "model")
            reject_local_path(dataset, "dataset")

        settings = dict(self.run_defaults)
        settings.update(model=model, method=method, dataset=dataset,
                        dataset_config=(dataset_config or "").strip() or None)
        bits_value = parse_whole_number(bits, "--bits")
        if bits_value is None:
            raise ConfigError("--bits is missing", f"Choose one of {', '.join(map(str, SUPPORTED_BITS))}")
        settings["bits"] = bits_value
        budget_value = parse_whole_number(budget, "--budget")
        if budget_value is not None:
            settings["budget"] = budget_value
        # An empty choice keeps run_defaults or RunConfig's default; RunConfig rejects unknown values.
        if selection:
            settings["selection"] = selection
        if objective:
            settings["objective"] = objective
        return RunConfig(**settings)

    def request_cancel(self, request: gr.Request | None = None) -> str:
        """Ask the visitor's running job to stop at its next progress report."""
        flag = self._cancel_flags.get(_session_key(request))
        if flag is None:
            return "Cancelled."
        flag.set()
        return "Cancelling: the job stops at its next progress step."

    def run_job(self, model: str, bits, method: str, dataset: str, dataset_config: str | None, budget,
                selection: str | None, objective: str | None, namespace: str | None, private: bool, token_text: str | None,
                profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None,
                request: gr.Request | None = None, progress=gr.Progress(track_tqdm=True)):
        """Run every stage and publish the three repos; return the summary, tables, charts and links."""
        from repair.publish import check_write_access, resolve_namespace

        # Check the form and the token's access before any download
        try:
            token = self.require_token(token_text, oauth_token)
            config = self.build_config(model, bits, method, dataset, dataset_config, budget, selection, objective)
            publish_config = PublishConfig(namespace=(namespace or "").strip() or None, private=bool(private),
                                           token=token)
            check_write_access(token, resolve_namespace(publish_config))
        except RepairError as error:
            log.info("Rejected a job: %s", error.message)
            raise gr.Error(error.message, print_exception=False) from error

        # One job at a time. The queue already runs one, but a cancelled job's thread may still be
        # finishing its current step, and the next job must not share the CPU or GPU with it.
        if not self._job_lock.acquire(blocking=False):
            progress(None, desc="Waiting for the previous job to stop")
            self._job_lock.acquire()
        session = _session_key(request)
        cancelled = threading.Event()
        self._cancel_flags[session] = cancelled
        root = self.work_dir / f"{config.slug()}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        visitor = f"{profile.username} (signed in)" if profile is not None else "the token field's user"
        log.info("Job %s started for %s: %s", root.name, visitor, equivalent_command(config, publish_config))
        start = time.perf_counter()
        try:
            return self._run_stages(config, publish_config, root, token, JobProgress(progress, cancelled), start)
        except RepairError as error:
            log.warning("Job %s failed: %s", root.name, error.message)
            raise gr.Error(error.message, print_exception=False) from error
        except JobCancelled:
            log.info("Job %s cancelled", root.name)
            raise gr.Error("The job was cancelled. Press Run to start it again.", print_exception=False) from None
        finally:
            if self._cancel_flags.get(session) is cancelled:
                del self._cancel_flags[session]
            if not self.keep_run_folders:
                shutil.rmtree(root, ignore_errors=True)
            self._job_lock.release()

    def _run_stages(self, config: RunConfig, publish_config: PublishConfig, root: Path, token: str,
                    job_progress: JobProgress, start: float) -> tuple:
        from repair.pipeline import Run
        from repair.publish import publish

        run = Run(config, root, token=token, progress=job_progress)
        steps = len(STAGES) + 1  # the stages, then publishing
        for number, stage in enumerate(STAGES, start=1):
            job_progress.check_cancelled()
            job_progress.stage = f"stage {number} of {len(STAGES)} ({stage})"
            job_progress.progress((number - 1) / steps, desc=job_progress.stage)
            run.run(stage)

        job_progress.check_cancelled()
        job_progress.stage = "publish"
        job_progress.progress(len(STAGES) / steps, desc="publish: uploading the three repos")
        published = publish(run, publish_config, command=equivalent_command(config, publish_config))
        seconds = time.perf_counter() - start
        log.info("Job %s published %s in %.0f s", root.name, ", ".join(published["repos"].values()), seconds)

        verified = run.stage_summary("verify")
        diagnosis = json.loads((run.root / "diagnosis.json").read_text())
        return (summary_markdown(run, seconds), results_table(verified), nll_chart(verified),
                frontier_chart(run.stage_summary("locate")), examples_table(diagnosis), links_markdown(published))


def fill_model(choice: str | None):
    """Copy a search result into the model field; an emptied dropdown leaves the field as it is."""
    return choice or gr.skip()


def _session_key(request: gr.Request | None) -> str:
    """Return the browser session of a request; direct calls without a request share one key."""
    return getattr(request, "session_hash", None) or "direct"


def build_ui(run_defaults: dict | None = None, work_dir: Path | None = None, *, in_space: bool | None = None,
             allow_local_paths: bool | None = None, keep_run_folders: bool | None = None) -> gr.Blocks:
    """Build the app with its queue; launching it is up to the caller.

    ``run_defaults`` sets RunConfig fields the form does not show (and the form's initial values),
    for example small sizes in tests. ``work_dir`` receives one run folder per job. ``in_space``
    defaults to whether this process runs in a Space, and decides between the sign-in button and
    the token field. Local model and dataset paths are accepted only outside a Space, unless
    ``allow_local_paths`` is given.
    """
    app = RepairApp(run_defaults, work_dir, in_space=in_space, allow_local_paths=allow_local_paths,
                    keep_run_folders=keep_run_folders)
    defaults = app.run_defaults

    with gr.Blocks(title="repair: fix a quantized model's math") as demo:
        gr.Markdown(
            "# repair\n"
            "Quantize a causal language model, find the first step where its step-by-step math breaks, train a "
            "LoRA adapter that repairs it, and publish three linked repos: the quantized checkpoint, the "
            "Silver Bullet dataset and the adapter."
        )

        # Sign-in
        with gr.Row():
            if app.in_space:
                gr.LoginButton()
            token_text = gr.Textbox(label="Hub token", type="password", visible=not app.in_space,
                                    placeholder="hf_...", info="Needs write access to the namespace below.",
                                    elem_id="hub-token")
        visitor = gr.Markdown(app.describe_visitor(None))

        # The form
        with gr.Row():
            model = gr.Textbox(label="Model", value=app.default_model(), scale=2, info=app.model_help(),
                               elem_id="model")
            search_query = gr.Textbox(label="Search the Hub", placeholder="SmolLM2", scale=1)
            search_button = gr.Button("Search", scale=0)
            found = gr.Dropdown(label="Search results", choices=[], scale=2, info="Pick one to fill the model field")
        with gr.Row():
            bits = gr.Dropdown(label="Bit-width", choices=list(SUPPORTED_BITS),
                               value=field_default("bits", defaults) or DEFAULT_BITS, info=field_help("bits"))
            method = gr.Radio(label="Method", choices=list(METHODS), value=field_default("method", defaults),
                              info=field_help("method"))
            budget = gr.Number(label="Budget", value=field_default("budget", defaults), precision=0, minimum=1,
                               info=field_help("budget"))
        with gr.Row():
            selection = gr.Radio(label="Training steps", choices=list(SELECTIONS),
                                 value=field_default("selection", defaults), info=field_help("selection"),
                                 elem_id="selection")
            objective = gr.Radio(label="Objective", choices=list(OBJECTIVES), value=field_default("objective", defaults),
                                 info=field_help("objective"), elem_id="objective")
        with gr.Row():
            dataset = gr.Textbox(label="Dataset", value=field_default("dataset", defaults),
                                 info="Hub dataset id with train and test splits in GSM8K's format")
            dataset_config = gr.Textbox(label="Dataset configuration",
                                        value=field_default("dataset_config", defaults) or DEFAULT_DATASET_CONFIG,
                                        info="For example main for openai/gsm8k; ignored for local files")
        with gr.Row():
            namespace = gr.Textbox(label="Target namespace", placeholder="your user name",
                                   info="User or organisation that receives the repos; empty means your account",
                                   elem_id="namespace")
            private = gr.Checkbox(label="Private repos", value=False)
        with gr.Row():
            run_button = gr.Button("Run", variant="primary")
            cancel_button = gr.Button("Cancel", variant="stop")

        # Results
        status = gr.Markdown(elem_id="status")
        table = gr.Dataframe(label="Held-out results", headers=RESULT_COLUMNS, interactive=False,
                             elem_id="results-table")
        with gr.Row():
            nll_plot = gr.BarPlot(x="model", y="held-out NLL", title="Held-out NLL per token (lower is better)",
                                  label="Held-out NLL per model", y_lim=[0, None], elem_id="nll-plot")
            frontier_plot = gr.BarPlot(x="frontier step", y="problems", title="First faulty step of training problems",
                                       label="Frontier steps", sort=FRONTIER_STEP_ORDER, elem_id="frontier-plot")
        examples = gr.Dataframe(label="Example failures", headers=EXAMPLE_COLUMNS, interactive=False, wrap=True,
                                column_widths=["12%", "6%", "8%", "32%", "32%", "10%"], elem_id="examples-table")
        links = gr.Markdown(elem_id="links")

        # Wiring
        demo.load(app.describe_visitor, None, visitor, queue=False)
        search_event = dict(fn=app.search_models, inputs=[search_query, token_text], outputs=found,
                            concurrency_limit=SEARCH_CONCURRENCY)
        search_button.click(**search_event)
        search_query.submit(**search_event)
        found.input(fill_model, found, model, queue=False)
        run_event = run_button.click(
            app.run_job,
            inputs=[model, bits, method, dataset, dataset_config, budget, selection, objective, namespace, private,
                    token_text],
            outputs=[status, table, nll_plot, frontier_plot, examples, links],
        )
        cancel_button.click(app.request_cancel, None, status, queue=False, cancels=[run_event])

    demo.queue(default_concurrency_limit=1, max_size=QUEUE_MAX_SIZE)
    return demo
