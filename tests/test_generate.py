"""Format-aligned prompts, batched greedy generation and parsing of generated solutions."""

import pytest
import torch

from model_fixtures import gsm8k_rows
from repair.generate import AnswerLineStop, build_generation_prompt, generate_solutions, parse_solution
from repair.steps import Problem, split_gsm8k_solution


@pytest.fixture(scope="module")
def problems():
    result = []
    for index, row in enumerate(gsm8k_rows("test", 5)):
        steps, answer = split_gsm8k_solution(row["answer"])
        result.append(Problem(id=f"p{index}", question=row["question"], steps=steps, answer=answer))
    return result


def test_prompt_uses_chat_template(tokenizer, problems):
    prompt = build_generation_prompt(tokenizer, problems[0].question)
    assert prompt.startswith("<|im_start|>")
    assert "'Step 1:'" in prompt
    assert problems[0].question in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_prompt_few_shot_turns(tokenizer, problems):
    prompt = build_generation_prompt(tokenizer, problems[0].question, examples=problems[1:3])
    assert prompt.count("<|im_start|>user") == 3
    assert prompt.count("<|im_start|>assistant") == 3
    assert f"Step 1: {problems[1].steps[0]}" in prompt
    assert f"The answer is: {problems[2].answer}" in prompt


def test_parse_solution_steps_and_answer():
    text = "Step 1: 48 / 2 = 24\n\nStep 2: 48 + 24 = 72\nThe answer is: 72\nStep 3: extra"
    assert parse_solution(text) == (["48 / 2 = 24", "48 + 24 = 72"], "72")


def test_parse_solution_list_numbers_and_bare_answer():
    text = "1. Step 1: 20 + 4 = 24\n2) **Step 2:** 24 * 2 = 48\nThe answer is 48."
    assert parse_solution(text) == (["20 + 4 = 24", "24 * 2 = 48"], "48")


def test_parse_solution_without_headers_or_answer():
    assert parse_solution("First 2 + 2 = 4\nthen more") == (["First 2 + 2 = 4", "then more"], None)


def test_answer_line_stop(tokenizer):
    prompt = tokenizer("Question?", add_special_tokens=False)["input_ids"]
    unfinished = prompt + tokenizer("Step 1: 2 + 2 = 4\nThe answer is: 4", add_special_tokens=False)["input_ids"]
    finished = prompt + tokenizer("Step 1: 2 + 2 = 4\nThe answer is: 4\n", add_special_tokens=False)["input_ids"]
    width = max(len(unfinished), len(finished))
    rows = [ids + [2] * (width - len(ids)) for ids in (unfinished, finished)]
    done = AnswerLineStop(tokenizer, len(prompt))(torch.tensor(rows), None)
    assert done.tolist() == [False, True]


def test_stop_on_repeated_lines():
    assert AnswerLineStop._row_done("Step 1: 20\nStep 1: 20\nStep 1: 20\n")
    assert not AnswerLineStop._row_done("Step 1: 20\nStep 1: 20\nStep 1: 20")
    assert not AnswerLineStop._row_done("Step 1: 20\nStep 2: 4\nStep 1: 20\n")


def test_batched_generation_matches_single(tiny_model, tokenizer, problems):
    batched, _ = generate_solutions(tiny_model, tokenizer, problems[:3], batch_size=3, max_new_tokens=12)
    for problem, generation in zip(problems[:3], batched):
        alone, _ = generate_solutions(tiny_model, tokenizer, [problem], batch_size=1, max_new_tokens=12)
        assert generation.problem_id == problem.id
        assert generation.text == alone[0].text


def test_generation_matches_greedy_without_cache(tiny_model, tokenizer, problems):
    generation, _ = generate_solutions(tiny_model, tokenizer, problems[:1], max_new_tokens=8)
    ids = tokenizer(build_generation_prompt(tokenizer, problems[0].question), add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(8):
            token = int(tiny_model(torch.tensor([ids + new]), use_cache=False).logits[0, -1].argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
    assert generation[0].new_tokens == len(new)
    assert generation[0].text == tokenizer.decode(new, skip_special_tokens=True)
