"""Render the Space's files from ``hub_templates/space/`` and create or update the Space on the Hub.

The Space runs the Gradio app of ``ui/app.py``. Its README front matter declares the Gradio
version this project is tested with and turns on "Sign in with Hugging Face" with the scopes a
job needs: reading private or gated base models, and writing the user's three repos.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from importlib import metadata, resources
from pathlib import Path

from repair import __version__
from repair.config import check_repo_name
from repair.errors import HubError, StageError

log = logging.getLogger(__name__)

PYTHON_VERSION = "3.11"  # the version setup.cfg's classifiers name and the tests run on
OAUTH_SCOPES = ["read-repos", "write-repos"]
# How long a sign-in lasts, in minutes; 8 hours leaves room for a queued job plus a long run.
OAUTH_EXPIRATION_MINUTES = 480
# Installing torch and the other pins takes minutes, so the first start gets an hour.
STARTUP_DURATION_TIMEOUT = "1h"
SUGGESTED_HARDWARE = "cpu-upgrade"  # only a hint for people who duplicate the Space
SHORT_DESCRIPTION = "Find and repair where quantized LLMs break at math"
SHORT_DESCRIPTION_LIMIT = 60  # maximum characters this project allows: the Space's card has room for one line


def _template(name: str) -> str:
    return str(resources.files("hub_templates") / "space" / name)


def _template_dir() -> str:
    return str(resources.files("hub_templates") / "space")


def project_pins() -> list[str]:
    """Return the install requirements of the installed repair package, without extras."""
    try:
        requires = metadata.requires("repair") or []
    except metadata.PackageNotFoundError as error:
        raise StageError("the repair package is not installed, so its pins are unknown",
                         'Install it with pip install -e ".[test]"', stage="space") from error
    return [requirement for requirement in requires if "extra ==" not in requirement]


def render_space(folder: Path, title: str, requirement: str | None = None) -> Path:
    """Write README.md, app.py and requirements.txt of the Space into ``folder`` and check them.

    ``requirement`` is the requirements line that installs repair itself on the Space; by default
    ``repair==<this version>``, which only resolves once that release is on PyPI.
    """
    from huggingface_hub import SpaceCard, SpaceCardData
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    gradio_version = metadata.version("gradio")
    project_requirement = requirement or f"repair=={__version__}"
    folder.mkdir(parents=True, exist_ok=True)

    # README.md: the front matter through SpaceCardData, the body from the template
    card_data = SpaceCardData(
        title=title, sdk="gradio", sdk_version=gradio_version, python_version=PYTHON_VERSION, app_file="app.py",
        license="apache-2.0", tags=["quantization", "lora", "math", "repair"],
        emoji="🔧", colorFrom="blue", colorTo="green", pinned=False, short_description=SHORT_DESCRIPTION,
        hf_oauth=True, hf_oauth_scopes=OAUTH_SCOPES, hf_oauth_expiration_minutes=OAUTH_EXPIRATION_MINUTES,
        suggested_hardware=SUGGESTED_HARDWARE, startup_duration_timeout=STARTUP_DURATION_TIMEOUT,
    )
    SpaceCard.from_template(
        card_data, template_path=_template("README.md.j2"), title=title, repair_version=__version__,
        gradio_version=gradio_version,
        example_command="repair push smollm2-135m --bits 3 --dataset openai/gsm8k --dataset-config main",
    ).save(folder / "README.md")

    # app.py as it is, requirements.txt rendered from the installed package's pins
    shutil.copyfile(_template("app.py"), folder / "app.py")
    environment = Environment(loader=FileSystemLoader(_template_dir()), undefined=StrictUndefined,
                              keep_trailing_newline=True)
    requirements = environment.get_template("requirements.txt.j2").render(
        project_requirement=project_requirement, repair_version=__version__, pins=project_pins())
    (folder / "requirements.txt").write_text(requirements)

    check_space_folder(folder, gradio_version)
    return folder


def check_space_folder(folder: Path, gradio_version: str) -> dict:
    """Return the README front matter after checking what the Hub and this app need of it."""
    from huggingface_hub import metadata_load

    try:
        meta = metadata_load(folder / "README.md") or {}
    except Exception as error:  # yaml raises several error types for broken front matter
        raise StageError(f"the Space README has invalid front matter: {error}", "Report this as a bug",
                         stage="space") from error
    expected = {"sdk": "gradio", "sdk_version": gradio_version, "app_file": "app.py", "hf_oauth": True}
    wrong = [f"{key}={meta.get(key)!r} (expected {value!r})" for key, value in expected.items() if meta.get(key) != value]
    if not (folder / str(meta.get("app_file"))).is_file():
        wrong.append(f"app_file {meta.get('app_file')!r} is not in the Space folder")
    if not set(OAUTH_SCOPES) <= set(meta.get("hf_oauth_scopes") or []):
        wrong.append(f"hf_oauth_scopes={meta.get('hf_oauth_scopes')!r} (expected {OAUTH_SCOPES})")
    if len(meta.get("short_description", "")) > SHORT_DESCRIPTION_LIMIT:
        wrong.append(f"short_description is longer than {SHORT_DESCRIPTION_LIMIT} characters")
    if wrong:
        raise StageError(f"the Space README front matter is wrong: {'; '.join(wrong)}", "Report this as a bug",
                         stage="space")
    return meta


def validate_on_hub(readme: Path, token: str) -> None:
    """Ask the Hub to validate the README's front matter, as it does on every commit.

    NOTE: ``RepoCard.validate`` posts to huggingface.co even when HF_ENDPOINT names another Hub
    (huggingface_hub 1.33), so this sends the same request to the configured endpoint instead.
    """
    from huggingface_hub import constants, get_session
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    response = get_session().post(f"{constants.ENDPOINT}/api/validate-yaml",
                                  json={"repoType": "space", "content": readme.read_text()},
                                  headers=build_hf_headers(token=token))
    try:
        hf_raise_for_status(response)
    except HfHubHTTPError as error:
        if response.status_code == 400:
            raise StageError(f"the Hub rejected the Space README front matter: {response.text}",
                             "Report this as a bug", stage="space") from error
        raise HubError(f"the Hub could not validate the Space README: {_first_line(error)}",
                       "Check the network and the token, then rerun") from error


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def deploy_space(name: str, token: str | None, namespace: str | None = None, private: bool = False,
                 requirement: str | None = None) -> str:
    """Create the Space ``namespace/name`` (or update it) with the app's files in one commit; return its URL.

    ``namespace`` defaults to the token's user. ``requirement`` is the requirements line that
    installs repair on the Space (see ``render_space``).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from repair.config import PublishConfig
    from repair.publish import check_write_access, resolve_namespace

    # Check the name and the token before rendering anything
    check_repo_name(name, "NAME")
    if not token:
        raise HubError("no Hub token found", "Log in with `hf auth login`, set HF_TOKEN, or pass --token")
    namespace = resolve_namespace(PublishConfig(namespace=namespace, token=token))
    check_write_access(token, namespace)
    api = HfApi(token=token)
    repo_id = f"{namespace}/{name}"
    if requirement is None:
        log.warning("The Space installs repair as 'repair==%s', which must be on PyPI; pass --requirement "
                    "with a git URL otherwise", __version__)

    # Render and check the files, then create the Space and upload them in one commit
    with tempfile.TemporaryDirectory(prefix="repair-space-") as scratch:
        folder = render_space(Path(scratch) / "space", title=name, requirement=requirement)
        validate_on_hub(folder / "README.md", token)
        try:
            url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder,
                              commit_message=f"Deploy the repair app {__version__}")
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            fix = ("Check that the token may write to this namespace" if status in (401, 403)
                   else "Rerun the same command: the upload is a single commit")
            raise HubError(f"deploying Space {repo_id} failed: {_first_line(error)}", fix, repo_id=repo_id) from error
        except OSError as error:
            raise HubError(f"deploying Space {repo_id} failed: {error}", "Check the network, then rerun",
                           repo_id=repo_id) from error
    log.info("Deployed Space %s", repo_id)
    return str(url)
