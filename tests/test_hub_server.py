"""Tests of the local Hub stand-in (hub_server.py) with the real huggingface_hub, datasets,
transformers and peft clients."""

import hashlib
import os
import socket
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hubstub import SocketGuard


def new_repo_id(prefix: str, namespace: str = "testuser") -> str:
    return f"{namespace}/{prefix}-{uuid.uuid4().hex[:8]}"


def commit_requests(hub_faults, repo_id: str) -> list[dict]:
    return [entry for entry in hub_faults.request_log() if entry["path"].endswith(f"{repo_id}/commit/main")]


def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


# ----- uploads and downloads -----


def test_upload_folder_lfs_download_roundtrip(hub_api, hub_faults, tmp_path):
    repo_id = new_repo_id("lfs")
    hub_api.create_repo(repo_id)
    folder = tmp_path / "upload"
    folder.mkdir()
    weights = os.urandom(1_500_000)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    hub_faults.clear_request_log()

    hub_api.upload_folder(repo_id=repo_id, folder_path=folder)

    requests = [(entry["method"], entry["path"]) for entry in hub_faults.request_log()]
    assert ("POST", f"/{repo_id}.git/info/lfs/objects/batch") in requests
    assert any(method == "PUT" and path.startswith("/__lfs/upload/") for method, path in requests)
    assert ("POST", f"/{repo_id}.git/info/lfs/objects/verify") in requests
    info = hub_api.model_info(repo_id, files_metadata=True)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["model.safetensors"].size == len(weights)
    assert siblings["config.json"].lfs is None

    path = hf_hub_download(repo_id, "model.safetensors", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == weights
    assert f"snapshots/{info.sha}/" in Path(path).as_posix()


def test_snapshot_download_gets_every_file(hub_api, tmp_path):
    repo_id = new_repo_id("snapshot")
    hub_api.create_repo(repo_id)
    contents = {
        "config.json": b'{"a": 1}',
        "weights/part-1.bin": os.urandom(4096),
        "weights/nested/notes.txt": b"notes\n",
    }
    operations = [CommitOperationAdd(path, data) for path, data in contents.items()]
    hub_api.create_commit(repo_id, operations, commit_message="Add files")

    snapshot = Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache"))

    assert snapshot.name == hub_api.repo_info(repo_id).sha
    for path, data in contents.items():
        assert (snapshot / path).read_bytes() == data
    assert (snapshot / ".gitattributes").is_file()


def test_resolve_head_size_and_ranges(hub_api, hub_url):
    repo_id = new_repo_id("range")
    hub_api.create_repo(repo_id)
    data = bytes(range(256)) * 8
    hub_api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id=repo_id)
    url = f"{hub_url}/{repo_id}/resolve/main/blob.bin"
    auth = {"Authorization": "Bearer hf_test_write"}

    head = httpx.head(url, headers=auth)
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert head.headers["X-Repo-Commit"] == hub_api.repo_info(repo_id).sha

    partial = httpx.get(url, headers={**auth, "Range": "bytes=10-19"})
    assert partial.status_code == 206
    assert partial.content == data[10:20]
    assert partial.headers["Content-Range"] == f"bytes 10-19/{len(data)}"

    tail = httpx.get(url, headers={**auth, "Range": "bytes=2000-"})
    assert tail.content == data[2000:]

    beyond = httpx.get(url, headers={**auth, "Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"


def test_unchanged_upload_skips_commit(hub_api, hub_faults):
    repo_id = new_repo_id("unchanged")
    hub_api.create_repo(repo_id)
    hub_api.upload_file(path_or_fileobj=b"same", path_in_repo="a.txt", repo_id=repo_id)
    hub_faults.clear_request_log()

    hub_api.upload_file(path_or_fileobj=b"same", path_in_repo="a.txt", repo_id=repo_id)

    assert commit_requests(hub_faults, repo_id) == []


# ----- datasets, transformers and peft -----


def test_dataset_push_and_load(hub_api):
    import datasets

    repo_id = new_repo_id("dataset")
    rows = {"text": ["alpha", "beta", "gamma"], "label": [0, 1, 0]}
    datasets.Dataset.from_dict(rows).push_to_hub(repo_id, split="train")

    loaded = datasets.load_dataset(repo_id, split="train")
    assert loaded.to_dict() == rows

    streamed = datasets.load_dataset(repo_id, split="train", streaming=True)
    assert list(streamed) == [{"text": t, "label": label} for t, label in zip(rows["text"], rows["label"])]


def test_transformers_push_and_from_pretrained(hub_api):
    import torch
    from transformers import LlamaForCausalLM

    repo_id = new_repo_id("tiny-llama")
    model = tiny_llama()
    model.push_to_hub(repo_id)

    files = set(hub_api.list_repo_files(repo_id))
    assert {"config.json", "model.safetensors", "README.md"} <= files
    loaded = LlamaForCausalLM.from_pretrained(repo_id)
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_peft_adapter_push_and_load(hub_api):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from transformers import LlamaForCausalLM

    base_id = new_repo_id("peft-base")
    adapter_id = new_repo_id("peft-adapter")
    tiny_llama().push_to_hub(base_id)
    base = LlamaForCausalLM.from_pretrained(base_id)
    # init_lora_weights=False gives non-zero B matrices, so a lost adapter would show.
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(base, config)
    adapted.push_to_hub(adapter_id)

    loaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_id), adapter_id)
    expected = get_peft_model_state_dict(adapted)
    actual = get_peft_model_state_dict(loaded)
    assert expected.keys() == actual.keys()
    for name, tensor in actual.items():
        assert torch.equal(tensor, expected[name]), name


# ----- access control -----


def test_private_repo_hidden_from_others(hub_api, hub_url, tmp_path):
    repo_id = new_repo_id("private")
    hub_api.create_repo(repo_id, private=True)
    other = HfApi(endpoint=hub_url, token="hf_other_write")
    anonymous = HfApi(endpoint=hub_url, token=False)

    assert hub_api.repo_info(repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        other.repo_info(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.repo_info(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", token="hf_other_write", cache_dir=tmp_path)
    assert repo_id not in [model.id for model in other.list_models(author="testuser")]
    assert repo_id in [model.id for model in hub_api.list_models(author="testuser")]


def test_settings_make_repo_private(hub_api, hub_url):
    repo_id = new_repo_id("settings")
    hub_api.create_repo(repo_id)
    other = HfApi(endpoint=hub_url, token="hf_other_write")
    assert other.repo_exists(repo_id)

    hub_api.update_repo_settings(repo_id, private=True)

    assert not other.repo_exists(repo_id)


def test_read_only_token_cannot_write(hub_api, hub_url):
    repo_id = new_repo_id("readonly")
    hub_api.create_repo(repo_id)
    reader = HfApi(endpoint=hub_url, token="hf_test_read")

    assert reader.whoami()["name"] == "testuser"
    with pytest.raises(HfHubHTTPError) as create_error:
        reader.create_repo(new_repo_id("readonly"))
    assert create_error.value.response.status_code == 403
    assert "read-only" in create_error.value.response.headers["X-Error-Message"]
    with pytest.raises(HfHubHTTPError) as upload_error:
        reader.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert upload_error.value.response.status_code == 403


def test_other_namespace_needs_membership(hub_api, hub_url):
    other = HfApi(endpoint=hub_url, token="hf_other_write")
    with pytest.raises(HfHubHTTPError) as error:
        other.create_repo(new_repo_id("intruder"))
    assert error.value.response.status_code == 403

    org_repo = new_repo_id("org", namespace="testorg")
    assert hub_api.create_repo(org_repo).repo_id == org_repo


def test_unknown_token_rejected(hub_url):
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(endpoint=hub_url, token="hf_unknown").whoami()
    assert error.value.response.status_code == 401


# ----- errors the clients map to exception types -----


def test_unknown_repo_raises_repository_not_found(hub_api, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        hub_api.repo_info("testuser/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("testuser/does-not-exist", "config.json", cache_dir=tmp_path)
    assert hub_api.repo_exists("testuser/does-not-exist") is False


def test_missing_file_and_revision(hub_api, tmp_path):
    repo_id = new_repo_id("missing")
    hub_api.create_repo(repo_id)

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.json", cache_dir=tmp_path)
    assert hub_api.file_exists(repo_id, "missing.json") is False
    with pytest.raises(RevisionNotFoundError):
        hub_api.repo_info(repo_id, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        list(hub_api.list_repo_tree(repo_id, path_in_repo="no-such-folder"))


def test_delete_missing_file_raises(hub_api):
    repo_id = new_repo_id("delete")
    hub_api.create_repo(repo_id)
    with pytest.raises(EntryNotFoundError):
        hub_api.delete_file("absent.txt", repo_id=repo_id)


def test_stale_parent_commit_rejected(hub_api):
    repo_id = new_repo_id("parent")
    hub_api.create_repo(repo_id)
    first_sha = hub_api.repo_info(repo_id).sha
    hub_api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=repo_id)

    with pytest.raises(HfHubHTTPError) as error:
        hub_api.create_commit(
            repo_id, [CommitOperationAdd("b.txt", b"2")], commit_message="late", parent_commit=first_sha
        )
    assert error.value.response.status_code == 412


def test_invalid_readme_front_matter_rejected(hub_api):
    repo_id = new_repo_id("card")
    hub_api.create_repo(repo_id)
    broken = b"---\nlicense: [mit\n---\n# Card\n"

    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        hub_api.upload_file(path_or_fileobj=broken, path_in_repo="README.md", repo_id=repo_id)
    assert "README.md" not in hub_api.list_repo_files(repo_id)

    valid = b"---\nlicense: mit\n---\n# Card\n"
    hub_api.upload_file(path_or_fileobj=valid, path_in_repo="README.md", repo_id=repo_id)
    assert hub_api.model_info(repo_id).card_data.license == "mit"


def test_validate_yaml_returns_json_errors(hub_url):
    url = f"{hub_url}/api/validate-yaml"
    ok = httpx.post(url, json={"content": "# no front matter\n", "repoType": "model"})
    assert ok.status_code == 200
    assert ok.json() == {"errors": [], "warnings": []}

    broken = httpx.post(url, json={"content": "---\n- a\n  b: [\n---\n", "repoType": "model"})
    assert broken.status_code == 400
    assert broken.json()["errors"][0]["message"].startswith("Invalid YAML")


def test_xet_token_not_emulated(hub_api, hub_url):
    repo_id = new_repo_id("xet")
    hub_api.create_repo(repo_id)
    url = f"{hub_url}/api/models/{repo_id}/xet-write-token/main"
    response = httpx.get(url, headers={"Authorization": "Bearer hf_test_write"})
    assert response.status_code == 501
    assert "HF_HUB_DISABLE_XET" in response.json()["error"]


# ----- refs, listing and repo types -----


def test_branches_tags_and_pull_requests(hub_api):
    repo_id = new_repo_id("refs")
    hub_api.create_repo(repo_id)
    hub_api.create_branch(repo_id, branch="dev")
    hub_api.upload_file(path_or_fileobj=b"dev", path_in_repo="dev.txt", repo_id=repo_id, revision="dev")
    hub_api.create_tag(repo_id, tag="v1", revision="dev")
    proposal = [CommitOperationAdd("pr.txt", b"pr")]
    pull = hub_api.create_commit(repo_id, proposal, commit_message="Propose", create_pr=True)

    refs = hub_api.list_repo_refs(repo_id, include_pull_requests=True)
    assert sorted(branch.name for branch in refs.branches) == ["dev", "main"]
    assert [tag.name for tag in refs.tags] == ["v1"]
    assert pull.pr_revision == "refs/pr/1"
    assert hub_api.list_repo_files(repo_id, revision="refs/pr/1") == [".gitattributes", "pr.txt"]
    assert "dev.txt" in hub_api.list_repo_files(repo_id, revision="v1")
    assert "dev.txt" not in hub_api.list_repo_files(repo_id)
    assert [commit.title for commit in hub_api.list_repo_commits(repo_id, revision="dev")] == [
        "Upload dev.txt with huggingface_hub",
        "initial commit",
    ]

    hub_api.delete_branch(repo_id, branch="dev")
    with pytest.raises(RevisionNotFoundError):
        hub_api.repo_info(repo_id, revision="dev")


def test_delete_folder_and_paths_info(hub_api):
    repo_id = new_repo_id("paths")
    hub_api.create_repo(repo_id)
    files = [CommitOperationAdd(path, b"x") for path in ("data/a.txt", "data/b.txt", "keep.txt")]
    hub_api.create_commit(repo_id, files, commit_message="Add")

    infos = hub_api.get_paths_info(repo_id, ["data", "keep.txt", "absent.txt"])
    found = sorted((type(info).__name__, info.path) for info in infos)
    assert found == [("RepoFile", "keep.txt"), ("RepoFolder", "data")]

    hub_api.create_commit(repo_id, [CommitOperationDelete("data/")], commit_message="Remove data")
    assert hub_api.list_repo_files(repo_id) == [".gitattributes", "keep.txt"]


def test_list_models_by_base_model_tag(hub_api, hub_url):
    base = f"testorg/base-{uuid.uuid4().hex[:8]}"
    quantized_id = new_repo_id("quantized")
    finetune_id = new_repo_id("finetune")
    hub_api.create_repo(quantized_id)
    hub_api.create_repo(finetune_id)
    card = f"---\nbase_model: {base}\nbase_model_relation: quantized\n---\n# Quantized\n"
    hub_api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=quantized_id)
    finetune_card = f"---\nbase_model: {base}\n---\n"
    hub_api.upload_file(path_or_fileobj=finetune_card.encode(), path_in_repo="README.md", repo_id=finetune_id)

    found = list(hub_api.list_models(filter=f"base_model:quantized:{base}"))
    assert [model.id for model in found] == [quantized_id]
    assert f"base_model:{base}" in found[0].tags

    # Without base_model_relation the relation is inferred: adapter_config.json makes an adapter.
    adapter_id = new_repo_id("adapter")
    hub_api.create_repo(adapter_id)
    adapter_files = [
        CommitOperationAdd("README.md", f"---\nbase_model: {base}\n---\n".encode()),
        CommitOperationAdd("adapter_config.json", b'{"peft_type": "LORA"}'),
    ]
    hub_api.create_commit(adapter_id, adapter_files, commit_message="Add adapter")

    derived = {model.id for model in hub_api.list_models(filter=f"base_model:{base}")}
    assert derived == {quantized_id, finetune_id, adapter_id}
    assert f"base_model:finetune:{base}" in hub_api.model_info(finetune_id).tags
    assert f"base_model:adapter:{base}" in hub_api.model_info(adapter_id).tags

    with_card = list(hub_api.list_models(search=quantized_id.split("/")[1], author="testuser", cardData=True))
    assert [model.id for model in with_card] == [quantized_id]
    assert with_card[0].card_data.base_model == base
    assert len(list(hub_api.list_models(author="testuser", limit=1))) == 1
    assert list(hub_api.list_models(author="nobody")) == []


def test_dataset_and_space_repo_types(hub_api):
    dataset_id = new_repo_id("typed-dataset")
    space_id = new_repo_id("typed-space")
    dataset_url = hub_api.create_repo(dataset_id, repo_type="dataset")
    space_url = hub_api.create_repo(space_id, repo_type="space", space_sdk="static")

    assert dataset_url.repo_type == "dataset"
    assert hub_api.dataset_info(dataset_id).id == dataset_id
    assert space_url.repo_type == "space"
    assert hub_api.space_info(space_id).sdk == "static"
    with pytest.raises(RepositoryNotFoundError):
        hub_api.model_info(dataset_id)

    hub_api.delete_repo(dataset_id, repo_type="dataset")
    assert not hub_api.repo_exists(dataset_id, repo_type="dataset")
    hub_api.delete_repo(dataset_id, repo_type="dataset", missing_ok=True)


def test_create_existing_repo_conflicts(hub_api):
    repo_id = new_repo_id("exists")
    hub_api.create_repo(repo_id)
    assert hub_api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as error:
        hub_api.create_repo(repo_id)
    assert error.value.response.status_code == 409


# ----- fault injection and the request log -----


def test_commit_503_raises_without_retry(hub_api, hub_faults):
    repo_id = new_repo_id("fault")
    hub_api.create_repo(repo_id)
    hub_faults.add_fault(f"^/api/models/{repo_id}/commit/", 503, method="POST")
    hub_faults.clear_request_log()

    # create_commit sends the commit once (huggingface_hub retries it only in the Xet upload
    # pipeline), so the 503 reaches the caller.
    with pytest.raises(HfHubHTTPError) as error:
        hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert error.value.response.status_code == 503
    assert [entry["status"] for entry in commit_requests(hub_faults, repo_id)] == [503]

    hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert "x.txt" in hub_api.list_repo_files(repo_id)


def test_preupload_503_is_retried(hub_api, hub_faults):
    repo_id = new_repo_id("retry")
    hub_api.create_repo(repo_id)
    hub_faults.add_fault(f"^/api/models/{repo_id}/preupload/", 503, method="POST", headers={"Retry-After": "0"})
    hub_faults.clear_request_log()

    hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)

    statuses = [entry["status"] for entry in hub_faults.request_log() if "/preupload/" in entry["path"]]
    assert statuses == [503, 200]
    assert "x.txt" in hub_api.list_repo_files(repo_id)


def test_reset_drops_connection(hub_api, hub_faults):
    repo_id = new_repo_id("reset")
    hub_api.create_repo(repo_id)
    hub_faults.add_fault(f"^/api/models/{repo_id}/commit/", method="POST", reset=True)

    with pytest.raises(httpx.TransportError):
        hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert [entry["status"] for entry in commit_requests(hub_faults, repo_id)][-1] == "reset"


def test_request_log_omits_tokens(hub_api, hub_faults):
    hub_api.whoami()
    log = hub_faults.request_log()
    assert {"method": "GET", "path": "/api/whoami-v2", "status": 200, "user": "testuser"} in log
    assert "hf_test_write" not in repr(log)


# ----- network guard -----


def test_socket_guard_rejects_remote_hosts():
    guard = SocketGuard()

    with pytest.raises(OSError, match="blocked"):
        guard.getaddrinfo("example.com", 443)
    with socket.socket() as sock, pytest.raises(OSError, match="blocked"):
        guard.connect(sock, ("93.184.216.34", 443))

    assert guard.attempts == ["example.com:443", "93.184.216.34:443"]
    assert guard.getaddrinfo("127.0.0.1", 80)


def test_socket_guard_installed_for_session():
    assert isinstance(socket.getaddrinfo.__self__, SocketGuard)
