"""Loading a model runs no code it ships, and reads no pickle, unless the user allows it."""

import ast
import json
import shutil
from pathlib import Path

import pytest

from repair.errors import ModelSourceError
from repair.sources import LoadPolicy, load_reference, resolve_model

ROOT = Path(__file__).resolve().parents[1]

MODELING_CODE = """
open({marker!r}, "w").close()

from transformers import LlamaConfig, LlamaForCausalLM


class MarkerConfig(LlamaConfig):
    model_type = "marker-llama"


class MarkerModel(LlamaForCausalLM):
    config_class = MarkerConfig
"""


@pytest.fixture
def remote_code_model(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """The tiny model with its classes mapped to shipped code that leaves a marker file when imported."""
    folder = tmp_path / "remote-code"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "code-ran"
    (folder / "modeling_marker.py").write_text(MODELING_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="marker-llama", architectures=["MarkerModel"],
                  auto_map={"AutoConfig": "modeling_marker.MarkerConfig",
                            "AutoModelForCausalLM": "modeling_marker.MarkerModel"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_remote_code_rejected_by_default(remote_code_model):
    folder, marker = remote_code_model
    with pytest.raises(ModelSourceError, match="ships its own Python code"):
        resolve_model(str(folder))
    assert not marker.exists()


def test_remote_code_runs_with_trust(remote_code_model):
    folder, marker = remote_code_model
    policy = LoadPolicy(trust_remote_code=True)
    source = resolve_model(str(folder), policy=policy)
    model, _ = load_reference(source, policy)
    assert marker.exists()
    assert type(model).__name__ == "MarkerModel"


@pytest.fixture
def pickle_model(tiny_model, tiny_model_dir, tmp_path) -> Path:
    """The tiny model with its weights saved only as pytorch_model.bin."""
    folder = tmp_path / "pickle-model"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy2(item, folder / item.name)
    import torch

    torch.save(tiny_model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickle_rejected_by_default(pickle_model):
    with pytest.raises(ModelSourceError, match=r"only pickle files \(pytorch_model\.bin\)"):
        resolve_model(str(pickle_model))


def test_pickle_loads_when_allowed(pickle_model, tiny_model):
    import torch

    policy = LoadPolicy(allow_pickle=True)
    model, _ = load_reference(resolve_model(str(pickle_model), policy=policy), policy)
    expected = tiny_model.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], msg=name)


def test_memory_check_can_be_skipped(tmp_path, monkeypatch):
    import repair.sources

    # One byte available: every real model is too large.
    monkeypatch.setattr(repair.sources, "available_memory", lambda: 1)
    folder = tmp_path / "tiny-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                                     "num_hidden_layers": 1, "num_attention_heads": 4,
                                                     "vocab_size": 1000}))
    with pytest.raises(ModelSourceError, match=r"needs about 0\.0 GB of memory .* but only 0\.0 GB is available"):
        resolve_model(str(folder))
    assert resolve_model(str(folder), policy=LoadPolicy(check_memory=False)).kind == "folder"


def _calls(path: Path) -> list[str]:
    """Return the dotted names of every call in a Python file, such as ``subprocess.run``."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            target = node.func
            parts = []
            while isinstance(target, ast.Attribute):
                parts.append(target.attr)
                target = target.value
            # A call on an expression, such as model(...).eval(), keeps a placeholder for the expression.
            parts.append(target.id if isinstance(target, ast.Name) else "<expression>")
            names.append(".".join(reversed(parts)))
            if any(keyword.arg == "shell" for keyword in node.keywords):
                names.append("shell=")
    return names


def test_no_shell_commands_in_product_code():
    sources = [ROOT / "cli.py", *sorted((ROOT / "repair").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))]
    assert len(sources) > 10
    forbidden = {"os.system", "os.popen", "subprocess.run", "subprocess.call", "subprocess.Popen",
                 "subprocess.check_call", "subprocess.check_output", "shell=", "eval", "exec"}
    for path in sources:
        assert forbidden.isdisjoint(_calls(path)), path
