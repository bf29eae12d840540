"""A language model as judge for wrong solutions that the rules cannot place.

The judge reads the problem, the reference solution and the generated steps, and is asked
for each step in turn whether it is correct, then which of the four error types the first
wrong step shows. A local judge reads its answers from the next-token logits ("Yes" against
"No", one option letter against the others), so a judgement costs one forward pass and needs
no sampling. ``repair.judge_api`` sends the questions to a served model instead. With several
votes, each vote words the question differently and lists the error types in another order,
which evens out a small model's bias towards one position. The majority wins.
"""

from __future__ import annotations

import logging
from collections import Counter

from repair.faults import ERROR_TYPES, ErrorType, Fault
from repair.steps import ANSWER_PREFIX

log = logging.getLogger(__name__)

_TYPE_DEFINITIONS = {
    "execution": "an arithmetic slip: the calculation's stated result is false",
    "conceptual": "a misread problem: it uses a quantity that is not in the problem",
    "method": "a wrong operation or formula on the right quantities",
    "reasoning": "a value that contradicts an earlier step",
}
_STEP_QUESTIONS = (
    "Is step {k} of the student's solution correct? Answer Yes or No.",
    "Check step {k} of the student's solution against the reference. Is it correct? Answer Yes or No.",
    "Does step {k} of the student's solution follow correctly from the problem and the earlier steps? Answer Yes or No.",
)
_LETTERS = "ABCD"
# Steps beyond this many are not judged: a solution that long has usually gone wrong earlier.
MAX_JUDGED_STEPS = 12


class StepJudge:
    """Questions, votes and majority of a step judge. Subclasses choose each answer.

    ``_choose`` returns the index of the chosen option, or None when the judge abstains
    (a served model whose reply matches no option). Abstaining votes are left out of the majority.
    """

    def __init__(self, votes: int = 1, name: str = ""):
        self.votes = votes
        self.name = name

    def _choose(self, text: str, options: list[str]) -> int | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the judge keeps open between questions. The base class keeps nothing open."""

    def _context(self, question: str, reference: list[str], steps: list[str]) -> str:
        reference_text = "\n".join(f"{i + 1}. {line}" for i, line in enumerate(reference)) or "(none)"
        student_text = "\n".join(f"Step {i + 1}: {line}" for i, line in enumerate(steps))
        return f"Problem: {question}\n\nReference solution:\n{reference_text}\n\nStudent's solution:\n{student_text}\n\n"

    def first_wrong_step(self, question: str, steps: list[str], reference: list[str]) -> tuple[int | None, list[int | None]]:
        """Return the majority's first wrong step (0-based) and each vote's choice.

        A vote that finds every judged step correct picks the last one, which is wrong
        because the final answer is. A vote that abstains on any of its questions is None,
        and so is the majority when every vote abstains.
        """
        judged = steps[:MAX_JUDGED_STEPS]
        choices: list[int | None] = []
        for vote in range(self.votes):
            template = _STEP_QUESTIONS[vote % len(_STEP_QUESTIONS)]
            choice: int | None = len(judged) - 1
            for index in range(len(judged)):
                text = self._context(question, reference, judged[:index + 1]) + template.format(k=index + 1)
                answer = self._choose(text, ["Yes", "No"])
                if answer is None or answer == 1:
                    choice = None if answer is None else index
                    break
            choices.append(choice)
        return _majority(choices), choices

    def error_type(self, question: str, prefix: list[str], step: str,
                   reference: list[str]) -> tuple[ErrorType | None, list[ErrorType | None]]:
        """Return the majority's error type of a wrong step and each vote's choice (None where it abstained)."""
        choices: list[ErrorType | None] = []
        for vote in range(self.votes):
            # Each vote rotates the order of the options.
            order = [ERROR_TYPES[(i + vote) % len(ERROR_TYPES)] for i in range(len(ERROR_TYPES))]
            options = "\n".join(f"{_LETTERS[i]}. {name}: {_TYPE_DEFINITIONS[name]}" for i, name in enumerate(order))
            text = (self._context(question, reference, prefix + [step])
                    + f"Step {len(prefix) + 1} is wrong. Which kind of error is it?\n{options}\nAnswer with one letter.")
            answer = self._choose(text, list(_LETTERS))
            choices.append(None if answer is None else order[answer])
        return _majority(choices), choices

    def settle(self, question: str, steps: list[str], answer: str | None, reference: list[str],
               problem_id: str = "") -> Fault | None:
        """Return the first faulty step and its error type by majority vote.

        Returns None for an empty solution, and when every vote on the step or on the type
        abstained. ``problem_id`` names the problem in the log line about abstentions.
        """
        lines = list(steps) + ([ANSWER_PREFIX + answer] if answer is not None else [])
        if not lines:
            return None
        index, step_votes = self.first_wrong_step(question, lines, reference)
        type_votes: list[ErrorType | None] = []
        error_type = None
        if index is not None:
            error_type, type_votes = self.error_type(question, lines[:index], lines[index], reference)
        abstained = step_votes.count(None) + type_votes.count(None)
        if abstained:
            log.warning("Judge %s abstained on problem %s: %d of %d step votes and %d of %d type votes matched "
                        "no option and were not counted", self.name, problem_id or question[:40],
                        step_votes.count(None), len(step_votes), type_votes.count(None), len(type_votes))
        if index is None or error_type is None:
            return None

        counted_steps = [v + 1 for v in step_votes if v is not None]
        counted_types = [v for v in type_votes if v is not None]
        reference_step = reference[min(index, len(reference) - 1)] if reference else ""
        detail = f"judge {self.name}: step votes {counted_steps}, type votes {counted_types}"
        if abstained:
            detail += f"; {abstained} abstained"
        # A judge that always picks the same position gives rotated votes that never agree.
        if Counter(counted_types).most_common(1)[0][1] * 2 <= len(counted_types) and len(counted_types) > 1:
            detail += "; no majority on the type, so the first vote was kept"
            log.warning("Judge %s reached no majority on the error type of step %d: %s",
                        self.name, index + 1, counted_types)
        return Fault(index, error_type, lines[index], reference_step, detail)


class Judge(StepJudge):
    """A causal LM used as a step judge, with ``votes`` differently worded judgements per decision."""

    def __init__(self, model, tokenizer, votes: int = 1, name: str = ""):
        super().__init__(votes, name)
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, spec: str, votes: int = 1, token: str | None = None) -> Judge:
        """Load the judge from a local folder, a .gguf file, a built-in alias or a Hub id (downloaded once)."""
        from repair.sources import load_reference, resolve_model

        model, tokenizer = load_reference(resolve_model(spec, token))
        return cls(model, tokenizer, votes, spec)

    def _prompt(self, text: str) -> list[int]:
        messages = [{"role": "user", "content": text}]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text += "\n"
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _choose(self, text: str, options: list[str]) -> int:
        """Return the index of the option whose first token is most likely right after ``text``."""
        import torch

        option_ids = [self.tokenizer(option, add_special_tokens=False)["input_ids"][0] for option in options]
        with torch.inference_mode():
            logits = self.model(torch.tensor([self._prompt(text)])).logits[0, -1]
        return int(torch.argmax(logits[option_ids]))


def _majority(choices: list):
    """Return the most common choice that is not None, or None if there is none.

    Ties go to the choice made first.
    """
    counts = Counter(choice for choice in choices if choice is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(choice for choice in choices if choice is not None and counts[choice] == top)
