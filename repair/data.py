"""Load benchmark problems from a Hub dataset or a local file or folder.

Rows are turned into ``Problem`` objects by a row parser chosen from the columns. GSM8K
(question, solution ending in ``#### answer``) is parsed now; other formats add a parser here.
Bad rows are counted by reason, never silently lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from repair.errors import DatasetError
from repair.steps import Problem, normalize_number, split_gsm8k_solution

log = logging.getLogger(__name__)

Split = Literal["train", "test"]

_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
_QUESTION_FIELDS = ("question", "problem", "input")
_SOLUTION_FIELDS = ("answer", "solution")


@dataclass
class LoadedSplit:
    """Problems of one split, plus the rows that were dropped and why."""

    problems: list[Problem]
    dropped: Counter = field(default_factory=Counter)
    source: str = ""

    def summary(self) -> dict:
        return {"source": self.source, "problems": len(self.problems), "dropped": dict(self.dropped)}


def problem_id(question: str) -> str:
    """Return a stable id from the question text, so duplicates collapse and ids survive reordering."""
    return hashlib.sha1(question.strip().encode()).hexdigest()[:12]


def load_split(dataset: str, split: Split, config_name: str | None = None, limit: int | None = None,
               token: str | None = None) -> LoadedSplit:
    """Load up to ``limit`` problems of ``split`` from ``dataset``."""
    path = Path(dataset).expanduser()
    if path.exists():
        rows, dropped, source = _read_local(path, split)
    else:
        _check_hub_id(dataset)
        rows, dropped, source = _read_hub(dataset, split, config_name, token)

    loaded = _parse_rows(rows, dropped, source, limit)
    if not loaded.problems:
        reasons = ", ".join(f"{count} {reason}" for reason, count in loaded.dropped.items()) or "no rows"
        raise DatasetError(
            f"dataset {dataset} ({split} split) has no usable problems ({reasons})",
            "Each row needs a question and a step-by-step solution ending in '#### <answer>', as in GSM8K",
        )
    if loaded.dropped:
        log.warning("Dropped rows from %s: %s", source, dict(loaded.dropped))
    return loaded


def _check_hub_id(dataset: str) -> None:
    """Reject a name that is neither an existing path nor a well-formed Hub dataset id."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", dataset) and ".." not in dataset:
        return
    if "/" in dataset:
        raise DatasetError(f"dataset {dataset} is neither a local file or folder nor a valid Hub dataset id",
                           "Check the path, or give a Hub id as namespace/name such as openai/gsm8k")
    raise DatasetError(f"dataset {dataset} not found", "Give a Hub dataset id such as openai/gsm8k, or a local file or folder")


def _split_file(folder: Path, split: Split) -> Path | None:
    for suffix in _LOCAL_SUFFIXES:
        for candidate in (folder / f"{split}{suffix}", *sorted(folder.glob(f"**/{split}-*{suffix}"))):
            if candidate.is_file():
                return candidate
    return None


def _read_local(path: Path, split: Split) -> tuple[list[dict], Counter, str]:
    if path.is_dir():
        file = _split_file(path, split)
        if file is None:
            raise DatasetError(
                f"folder {path} has no {split} split",
                f"Add {split}.jsonl (or .json, .parquet) to it, or pass a single file",
            )
        rows, dropped = _read_file(file)
        return rows, dropped, str(file)

    # A single file serves both splits: every fifth problem, chosen by id, is held out for testing.
    rows, dropped = _read_file(path)
    held_out = [row for row in rows if _is_held_out(row)]
    kept = held_out if split == "test" else [row for row in rows if not _is_held_out(row)]
    return kept, dropped, f"{path} ({split}: problems whose id hash is {'' if split == 'test' else 'not '}0 mod 5)"


def _is_held_out(row: dict) -> bool:
    question = next((str(row[name]) for name in _QUESTION_FIELDS if name in row), "")
    return int(problem_id(question), 16) % 5 == 0


def _read_file(path: Path) -> tuple[list[dict], Counter]:
    if path.suffix not in _LOCAL_SUFFIXES:
        raise DatasetError(f"file {path} is not .jsonl, .json or .parquet", "Convert it to one of these formats")
    dropped: Counter = Counter()
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist(), dropped
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read {path}: {error}", "Check the file") from error
    except Exception as error:  # pyarrow raises its own error types for corrupt files
        raise DatasetError(f"cannot read parquet file {path}: {error}", "Check the file") from error

    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path} is not valid JSON: {error}", "Fix the file, or use one JSON object a line") from error
        return [row for row in rows if isinstance(row, dict)], dropped

    # JSON lines are read one by one so that a malformed line costs that line only.
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped["malformed JSON line"] += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            dropped["line is not a JSON object"] += 1
    return rows, dropped


def _read_hub(dataset: str, split: Split, config_name: str | None, token: str | None) -> tuple[list[dict], Counter, str]:
    import datasets
    from huggingface_hub.errors import HfHubHTTPError

    try:
        table = datasets.load_dataset(dataset, config_name, split=split, token=token)
    except datasets.exceptions.DatasetNotFoundError as error:
        raise DatasetError(f"dataset {dataset} not found on the Hub", "Check the id, or pass a token that can read it") from error
    except ValueError as error:
        message = str(error).splitlines()[0]
        if re.search(r"config name is missing|BuilderConfig", message):
            raise DatasetError(f"dataset {dataset} needs a configuration: {message}", "Pass --dataset-config, for example main") from error
        raise DatasetError(f"cannot load the {split} split of {dataset}: {message}", "Check the split names of the dataset") from error
    except (HfHubHTTPError, OSError, ConnectionError) as error:
        raise DatasetError(f"cannot download dataset {dataset}: {error}", "Check the network and the token") from error
    return list(table), Counter(), f"{dataset}:{split}"


def _parse_rows(rows: list[dict], dropped: Counter, source: str, limit: int | None) -> LoadedSplit:
    problems: list[Problem] = []
    seen: set[str] = set()
    for row in rows:
        question_field = next((name for name in _QUESTION_FIELDS if name in row), None)
        solution_field = next((name for name in _SOLUTION_FIELDS if name in row), None)
        if question_field is None:
            dropped["no question field"] += 1
            continue
        if solution_field is None or not str(row[solution_field] or "").strip():
            dropped["no answer"] += 1
            continue
        question = str(row[question_field]).strip()
        parsed = split_gsm8k_solution(str(row[solution_field]))
        if parsed is None:
            dropped["solution without steps or '#### answer'"] += 1
            continue
        pid = problem_id(question)
        if pid in seen:
            dropped["duplicate question"] += 1
            continue
        seen.add(pid)
        steps, answer = parsed
        problems.append(Problem(id=pid, question=question, steps=steps, answer=answer))
        if limit is not None and len(problems) >= limit:
            break
    return LoadedSplit(problems=problems, dropped=dropped, source=source)


# Evaluation sets for the generated diagnosis. Unlike training data they need no step-by-step
# solution: a question and a final answer are enough, and a gold solution, when the row has one,
# becomes the reference steps.
_EVAL_QUESTION_FIELDS = ("question", "problem", "input", "Question", "Problem")
_EVAL_ANSWER_FIELDS = ("answer", "target", "Answer", "final_answer")
_EVAL_SOLUTION_FIELDS = ("solution", "rationale")
_ASY_BLOCK = re.compile(r"\[asy\].*?\[/asy\]", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$])")


def load_eval_split(dataset: str, split: Split = "test", question_field: str | None = None,
                    answer_field: str | None = None, config_name: str | None = None, limit: int | None = None,
                    token: str | None = None) -> LoadedSplit:
    """Load up to ``limit`` problems with final answers from GSM8K, MATH-500, AIME, MAWPS or named columns.

    A local folder without a ``split`` file contributes all of its data files, as MAWPS does;
    a single local file is used whole.
    """
    path = Path(dataset).expanduser()
    if path.exists():
        rows, dropped, source = _read_eval_local(path, split)
    else:
        _check_hub_id(dataset)
        rows, dropped, source = _read_hub(dataset, split, config_name, token)

    problems: list[Problem] = []
    seen: set[str] = set()
    for row in rows:
        parsed = parse_eval_row(row, question_field, answer_field)
        if isinstance(parsed, str):
            dropped[parsed] += 1
            continue
        if parsed.id in seen:
            dropped["duplicate question"] += 1
            continue
        seen.add(parsed.id)
        problems.append(parsed)
        if limit is not None and len(problems) >= limit:
            break

    if not problems:
        reasons = ", ".join(f"{count} {reason}" for reason, count in dropped.items()) or "no rows"
        fields = ", ".join(sorted(rows[0])) if rows else "none"
        raise DatasetError(f"dataset {dataset} ({split} split) has no usable problems ({reasons}; columns: {fields})",
                           "Name the columns with --question-field and --answer-field")
    if dropped:
        log.warning("Dropped rows from %s: %s", source, dict(dropped))
    return LoadedSplit(problems=problems, dropped=dropped, source=source)


def parse_eval_row(row: dict, question_field: str | None = None, answer_field: str | None = None) -> Problem | str:
    """Turn one row into a ``Problem``, or return the reason it is dropped."""
    question_name = question_field or next((name for name in _EVAL_QUESTION_FIELDS if name in row), None)
    answer_name = answer_field or next((name for name in _EVAL_ANSWER_FIELDS if name in row), None)
    if question_name is None or question_name not in row:
        return f"no question field {question_field}" if question_field else "no question field"
    if answer_name is None or answer_name not in row or row[answer_name] is None or not str(row[answer_name]).strip():
        return "no answer"
    question = str(row[question_name]).strip()
    raw_answer = str(row[answer_name]).strip()

    # A GSM8K solution carries both the steps and the answer.
    if "####" in raw_answer:
        parsed = split_gsm8k_solution(raw_answer)
        if parsed is None:
            return "solution without steps or '#### answer'"
        steps, answer = parsed
        return Problem(id=problem_id(question), question=question, steps=steps, answer=answer)

    solution_name = next((name for name in _EVAL_SOLUTION_FIELDS if name in row and name != answer_name), None)
    steps = split_solution_text(str(row[solution_name])) if solution_name and row[solution_name] else ()
    answer = normalize_number(raw_answer) if re.fullmatch(r"-?[\d,]*\.?\d+", raw_answer) else raw_answer
    return Problem(id=problem_id(question), question=question, steps=steps, answer=answer)


def split_solution_text(solution: str) -> tuple[str, ...]:
    """Split a prose solution (MATH, AIME) into steps: one per line, long lines cut at sentence ends.

    Asymptote figures are removed because they carry no step a model could be scored on.
    """
    text = _ASY_BLOCK.sub("", solution)
    steps: list[str] = []
    for line in text.splitlines():
        for sentence in _SENTENCE_END.split(line.strip()):
            sentence = re.sub(r"\s+", " ", sentence).strip()
            if sentence:
                steps.append(sentence)
    return tuple(steps)


def _read_eval_local(path: Path, split: Split) -> tuple[list[dict], Counter, str]:
    if not path.is_dir():
        rows, dropped = _read_file(path)
        return rows, dropped, str(path)
    file = _split_file(path, split)
    files = [file] if file is not None else sorted(f for f in path.iterdir() if f.suffix in _LOCAL_SUFFIXES)
    if not files:
        raise DatasetError(f"folder {path} has no .jsonl, .json or .parquet files", f"Add {split}.jsonl to it, or pass a single file")
    rows: list[dict] = []
    dropped: Counter = Counter()
    for item in files:
        file_rows, file_dropped = _read_file(item)
        rows += file_rows
        dropped += file_dropped
    return rows, dropped, ", ".join(str(f) for f in files)
