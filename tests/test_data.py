"""Loading problems from local files, folders and the Hub."""

import json

import pytest

from model_fixtures import gsm8k_rows, write_jsonl
from repair.data import load_split, problem_id
from repair.errors import DatasetError


def test_folder_splits(gsm8k_dir):
    train = load_split(str(gsm8k_dir), "train", limit=5)
    test = load_split(str(gsm8k_dir), "test", limit=3)
    assert len(train.problems) == 5
    assert len(test.problems) == 3
    assert train.problems[0].answer == "72"
    assert train.problems[0].steps[0].startswith("Natalia sold 48/2 = 24 clips")


def test_malformed_lines_counted(tmp_path):
    rows = gsm8k_rows("train", 4)
    text = json.dumps(rows[0]) + "\n{not json\n" + json.dumps(rows[1]) + "\n[1, 2]\n" + json.dumps(rows[2]) + "\n"
    (tmp_path / "train.jsonl").write_text(text)
    loaded = load_split(str(tmp_path), "train")
    assert len(loaded.problems) == 3
    assert loaded.dropped["malformed JSON line"] == 1
    assert loaded.dropped["line is not a JSON object"] == 1


def test_rows_without_answers_rejected(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": "What is 2 + 2?"}, {"question": "And 3 + 3?", "answer": ""}])
    with pytest.raises(DatasetError, match="no usable problems.*2 no answer"):
        load_split(str(tmp_path), "train")


def test_duplicates_dropped(tmp_path):
    row = gsm8k_rows("train", 1)[0]
    write_jsonl(tmp_path / "train.jsonl", [row, row])
    loaded = load_split(str(tmp_path), "train")
    assert len(loaded.problems) == 1
    assert loaded.dropped["duplicate question"] == 1


def test_single_file_split_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", gsm8k_rows("train", 60))
    train = load_split(str(path), "train")
    test = load_split(str(path), "test")
    assert len(train.problems) + len(test.problems) == 60
    assert not {p.id for p in train.problems} & {p.id for p in test.problems}
    assert all(int(p.id, 16) % 5 == 0 for p in test.problems)


def test_missing_split_named(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", gsm8k_rows("train", 2))
    with pytest.raises(DatasetError, match="has no test split"):
        load_split(str(tmp_path), "test")


def test_unknown_local_name_rejected():
    with pytest.raises(DatasetError, match="not found"):
        load_split("no-such-folder", "train")


def test_hub_dataset_loaded(hub_api):
    from datasets import Dataset

    rows = gsm8k_rows("test", 6)
    Dataset.from_list(rows).push_to_hub("testuser/gsm8k-mini", split="test", token="hf_test_write")
    loaded = load_split("testuser/gsm8k-mini", "test", token="hf_test_write")
    assert [p.id for p in loaded.problems] == [problem_id(r["question"]) for r in rows]


def test_hub_dataset_missing():
    with pytest.raises(DatasetError, match="not found on the Hub"):
        load_split("testuser/does-not-exist", "train", token="hf_test_write")
