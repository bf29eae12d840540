"""Resolving models: built-in alias, GGUF file, local folder and Hub id, and the errors for each."""

import json

import pytest

from repair.errors import ModelSourceError
from repair.sources import check_causal_lm, load_reference, resolve_model


def test_builtin_alias_resolves_to_gguf():
    source = resolve_model("smollm2-135m")
    assert source.kind == "alias"
    assert (source.path / source.gguf_file).is_file()
    assert source.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert source.license == "apache-2.0"


def test_gguf_file_resolves():
    builtin = resolve_model("smollm2-135m")
    source = resolve_model(str(builtin.path / builtin.gguf_file))
    assert source.kind == "gguf"
    assert source.gguf_file == builtin.gguf_file


def test_local_folder_reads_card(tiny_model_dir):
    source = resolve_model(str(tiny_model_dir))
    assert source.kind == "folder"
    assert source.license == "apache-2.0"
    assert source.hub_id == "testorg/tiny-llama"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("smollm9-1b", "unknown model alias 'smollm9-1b'"),
        ("./missing/model", "model path ./missing/model not found"),
        ("missing.gguf", "GGUF file missing.gguf not found"),
        ("testuser/no-such-model", "model testuser/no-such-model not found on the Hub"),
    ],
)
def test_unresolvable_models_rejected(spec, message):
    with pytest.raises(ModelSourceError, match=message.replace(".", "\\.")):
        resolve_model(spec, token="hf_test_write")


def test_folder_without_config_rejected(tmp_path):
    with pytest.raises(ModelSourceError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_hub_model_downloaded_and_loaded(tiny_model_dir, hub_api):
    hub_api.create_repo("testuser/tiny-source", exist_ok=True)
    hub_api.upload_folder(repo_id="testuser/tiny-source", folder_path=tiny_model_dir)
    source = resolve_model("testuser/tiny-source", token="hf_test_write")
    assert source.kind == "hub"
    assert source.license == "apache-2.0"
    model, tokenizer = load_reference(source)
    assert model.config.num_hidden_layers == 2
    assert tokenizer.eos_token == "<|im_end|>"


def test_pickle_only_hub_model_rejected(tiny_model_dir, hub_api, tmp_path):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    hub_api.create_repo("testuser/pickle-only", exist_ok=True)
    hub_api.upload_folder(repo_id="testuser/pickle-only", folder_path=tmp_path)
    with pytest.raises(ModelSourceError, match="has no safetensors weights"):
        resolve_model("testuser/pickle-only", token="hf_test_write")


def test_private_model_needs_its_token(tiny_model_dir, hub_api):
    hub_api.create_repo("testuser/tiny-private", private=True, exist_ok=True)
    hub_api.upload_folder(repo_id="testuser/tiny-private", folder_path=tiny_model_dir)
    with pytest.raises(ModelSourceError, match="not found on the Hub.*token that can read it"):
        resolve_model("testuser/tiny-private", token="hf_other_write")


def test_non_causal_architecture_rejected(tmp_path):
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64).save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="is a 't5' model, not a causal language model"):
        check_causal_lm(resolve_model(str(tmp_path)))


def test_eos_follows_model_config(tiny_model_dir):
    from repair.sources import load_tokenizer

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert load_tokenizer(tiny_model_dir).eos_token_id == config["eos_token_id"]
