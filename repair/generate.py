"""Batched greedy generation of format-aligned solutions, and parsing them into steps.

The prompt asks for ``Step k:`` lines and the fixed answer line, through the model's chat
template when it has one; optional few-shot examples go in as earlier chat turns. Decoding is
greedy with the KV cache, capped at ``max_new_tokens``, and each row stops once its answer
line is complete.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass

from repair.measure import left_padded
from repair.progress import ProgressCallback, track
from repair.steps import PROMPT_TEMPLATE, Problem, format_solution

log = logging.getLogger(__name__)

# Markdown emphasis and list numbers that small models put before a line: "**", "1.", "2)".
_LINE_DECORATION = re.compile(r"^\s*(?:[*#>-]+\s*)*(?:\d+[.)]\s+)?(?:\*\*)?")
_STEP_LINE = re.compile(r"^\s*Step\s*\d+\s*:\s*(?:\*\*)?", re.IGNORECASE)
# The answer line as asked for, or without its colon ("The answer is 20.").
_ANSWER_LINE = re.compile(r"^\s*The answer is\s*:?", re.IGNORECASE)
# A complete answer line: the prefix, some text, then a newline.
_ANSWER_DONE = re.compile(r"The answer is\s*:?[^\n]*\S[^\n]*\n", re.IGNORECASE)


@dataclass
class Generation:
    """One model's generated solution to one problem."""

    problem_id: str
    text: str
    new_tokens: int
    steps: list[str]  # step bodies without their 'Step k:' headers
    answer_line: str | None  # text after 'The answer is:', or None when the model wrote no such line

    def to_dict(self) -> dict:
        return asdict(self)


def build_generation_prompt(tokenizer, question: str, examples: list[Problem] | None = None) -> str:
    """Return the prompt text that asks for numbered steps and the answer line.

    Each example becomes a user turn with its question and an assistant turn with its gold
    solution in the same format, so the model sees the exact layout it should write.
    """
    messages = []
    for example in examples or []:
        messages.append({"role": "user", "content": PROMPT_TEMPLATE.format(question=example.question)})
        messages.append({"role": "assistant", "content": format_solution(example.steps, example.answer)})
    messages.append({"role": "user", "content": PROMPT_TEMPLATE.format(question=question)})
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(message["content"] + "\n\n" for message in messages)


def parse_solution(text: str) -> tuple[list[str], str | None]:
    """Split generated text into step bodies and the answer line's contents.

    Every non-empty line before the answer line is a step, with or without its ``Step k:``
    header and list numbering, so a model that drops the headers is still read line by line.
    Text after the answer line is ignored.
    """
    steps: list[str] = []
    for raw_line in text.splitlines():
        line = _LINE_DECORATION.sub("", raw_line)
        if _ANSWER_LINE.match(line):
            return steps, _ANSWER_LINE.sub("", line).strip().strip("*").rstrip(".").strip()
        body = _STEP_LINE.sub("", line).strip()
        if body:
            steps.append(body)
    return steps, None


# A row that writes the same line this many times in a row is looping and will not reach an answer.
REPEATED_LINES_STOP = 3


class AnswerLineStop:
    """A stopping criterion that marks a row done once its generated text has a complete answer line,
    or once it has written the same line ``REPEATED_LINES_STOP`` times in a row."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [self._row_done(self.tokenizer.decode(row[self.prompt_length:], skip_special_tokens=True))
                for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    @staticmethod
    def _row_done(text: str) -> bool:
        if _ANSWER_DONE.search(text):
            return True
        lines = [line.strip() for line in text.split("\n")[:-1] if line.strip()]
        last = lines[-REPEATED_LINES_STOP:]
        return len(last) == REPEATED_LINES_STOP and len(set(last)) == 1


def generate_solutions(model, tokenizer, problems: list[Problem], examples: list[Problem] | None = None,
                       batch_size: int = 16, max_new_tokens: int = 256, progress: ProgressCallback | None = None,
                       desc: str = "generate") -> tuple[list[Generation], float]:
    """Generate a solution to every problem greedily; return them in input order and the seconds spent."""
    import torch
    from transformers import StoppingCriteriaList

    prompts = [tokenizer(build_generation_prompt(tokenizer, p.question, examples), add_special_tokens=False)["input_ids"]
               for p in problems]
    # Sorting by prompt length keeps padding small; results are put back in input order.
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: dict[int, Generation] = {}

    start = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for batch in track(batches, desc, progress):
            input_ids, attention = left_padded([prompts[i] for i in batch], pad_id)
            length = input_ids.shape[1]
            output = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=False, use_cache=True,
                                    max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                    stopping_criteria=StoppingCriteriaList([AnswerLineStop(tokenizer, length)]))

            for row, index in enumerate(batch):
                new_ids = [t for t in output[row, length:].tolist() if t != pad_id]
                text = tokenizer.decode(new_ids, skip_special_tokens=True)
                steps, answer_line = parse_solution(text)
                results[index] = Generation(problems[index].id, text, len(new_ids), steps, answer_line)
    seconds = time.perf_counter() - start
    log.info("%s: %d problems in %.1f s", desc, len(problems), seconds)
    return [results[i] for i in range(len(problems))], seconds
