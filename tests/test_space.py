"""`repair space deploy`: the Space's files, their front matter, and the deploy to the Hub stand-in."""

from importlib import metadata

import pytest
from click.testing import CliRunner

from cli import cli


@pytest.fixture
def runner():
    return CliRunner()


def _deploy(runner, *args):
    return runner.invoke(cli, ["space", "deploy", *args], catch_exceptions=False)


def _one_error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_rendered_front_matter(tmp_path):
    from huggingface_hub import metadata_load

    from repair.space import render_space

    folder = render_space(tmp_path / "space", title="repair-app")
    meta = metadata_load(folder / "README.md")
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == metadata.version("gradio") == "6.31.0"
    assert meta["python_version"] == "3.11"
    assert meta["app_file"] == "app.py"
    assert meta["hf_oauth"] is True
    assert meta["hf_oauth_scopes"] == ["read-repos", "write-repos"]
    assert meta["hf_oauth_expiration_minutes"] == 480
    assert meta["suggested_hardware"] == "cpu-upgrade"
    assert meta["startup_duration_timeout"] == "1h"
    assert len(meta["short_description"]) <= 60


def test_rendered_requirements_pin_project(tmp_path):
    from repair.space import render_space

    folder = render_space(tmp_path / "space", title="repair-app", requirement="repair @ git+https://example.invalid/r@v1")
    lines = [line for line in (folder / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "repair @ git+https://example.invalid/r@v1"
    assert "gradio[oauth]==6.31.0" in lines
    assert "torch==2.13.0" in lines
    assert not any("pytest" in line for line in lines)


def test_app_file_launches_only_as_script(tmp_path):
    from repair.space import render_space

    app_file = render_space(tmp_path, title="repair-app") / "app.py"
    source = app_file.read_text()
    assert "from ui.app import build_ui, launch_options" in source
    assert 'if __name__ == "__main__":\n    demo.launch(' in source
    compile(source, str(app_file), "exec")


def test_wrong_front_matter_rejected(tmp_path):
    from repair.errors import StageError
    from repair.space import check_space_folder, render_space

    folder = render_space(tmp_path / "space", title="repair-app")
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("hf_oauth: true", "hf_oauth: false"))
    with pytest.raises(StageError, match="hf_oauth=False \\(expected True\\)"):
        check_space_folder(folder, "6.31.0")


def test_deploy_creates_space(runner, hub_api):
    from huggingface_hub import hf_hub_download, metadata_load

    result = _deploy(runner, "repair-app", "--requirement", "repair @ git+https://example.invalid/r@v1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("/spaces/testuser/repair-app")

    info = hub_api.space_info("testuser/repair-app")
    assert info.sdk == "gradio"
    assert {sibling.rfilename for sibling in info.siblings} >= {"README.md", "app.py", "requirements.txt"}
    meta = metadata_load(hf_hub_download("testuser/repair-app", "README.md", repo_type="space"))
    assert meta["sdk"] == "gradio"
    assert meta["hf_oauth"] is True
    assert meta["sdk_version"] == "6.31.0"


def test_redeploy_updates_space(runner, hub_api):
    from huggingface_hub import hf_hub_download

    assert _deploy(runner, "repair-redeploy").exit_code == 0
    assert _deploy(runner, "repair-redeploy", "--requirement", "repair @ git+https://example.invalid/r@v2").exit_code == 0
    commits = hub_api.list_repo_commits("testuser/repair-redeploy", repo_type="space")
    deploys = [commit for commit in commits if commit.title.startswith("Deploy the repair app")]
    assert len(deploys) == 2
    requirements = open(hf_hub_download("testuser/repair-redeploy", "requirements.txt", repo_type="space")).read()
    assert "repair @ git+https://example.invalid/r@v2" in requirements.splitlines()


def test_deploy_to_organisation(runner, hub_api):
    result = _deploy(runner, "repair-org-app", "--namespace", "testorg", "--private")
    assert result.exit_code == 0, result.output
    assert hub_api.space_info("testorg/repair-org-app").private is True


def test_read_only_token_deploys_nothing(runner, hub_api):
    result = _deploy(runner, "repair-never", "--token", "hf_test_read")
    assert result.exit_code == 1
    assert _one_error_line(result).startswith("Error: the Hub token is read-only.")
    assert not hub_api.repo_exists("testuser/repair-never", repo_type="space")


def test_foreign_namespace_deploys_nothing(runner, hub_api):
    result = _deploy(runner, "repair-never", "--namespace", "otheruser")
    assert result.exit_code == 1
    assert "cannot write to namespace otheruser" in _one_error_line(result)
    assert not hub_api.repo_exists("otheruser/repair-never", repo_type="space", token="hf_other_write")


def test_invalid_space_name_rejected(runner):
    result = _deploy(runner, "bad name!")
    assert result.exit_code == 2
    assert _one_error_line(result) == ("Error: NAME 'bad name!' is not a valid Hub repo name. Use at most 96 letters, "
                                       "digits, '-', '_' or '.', not starting or ending with '-' or '.'.")
