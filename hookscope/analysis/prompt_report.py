"""``test_prompt`` (TransformerLens): how a model ranks the answer tokens after a prompt, printed.

:func:`prompt_report` returns the report (answer ranks, logits, probabilities, each position's top-k) as
text plus the ranks; :func:`test_prompt` prints it, as TransformerLens's function does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, kw_only=True)
class PromptReport:
    """The answer tokens' ranks (0 = the model's top choice) and the printable report.

    ``text`` is the whole report; ``prompt_str_tokens`` / ``answer_str_tokens`` are the tokenisation it opens
    with (when details were asked for) and ``body`` the rest.
    """

    answer_ranks: list[tuple[str, int]]
    text: str
    prompt_str_tokens: list[str]
    answer_str_tokens: list[str]
    body: str


def prompt_report(
    prompt: str, answer: str | list[str], model: Any, prepend_space_to_answer: bool = True,
    print_details: bool = True, prepend_bos: bool | None = None, top_k: int = 10,
) -> list[PromptReport]:
    """One report per answer: the prompt and answer tokenised, then at each answer token its rank, logit and
    probability and the ``top_k`` tokens the model preferred."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    if not answers:
        raise ValueError("test_prompt needs at least one answer")
    return [_one(prompt, a, model, prepend_space_to_answer, print_details, prepend_bos, top_k) for a in answers]


def _one(prompt: str, answer: str, model: Any, space: bool, details: bool, prepend_bos: bool | None,
         top_k: int) -> PromptReport:
    if space:
        answer = " " + answer.lstrip()
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)  # [1, prompt_len]
    answer_tokens = model.to_tokens(answer, prepend_bos=False)  # [1, answer_len]
    tokens = torch.cat([prompt_tokens, answer_tokens], dim=1)
    n_prompt = prompt_tokens.shape[1]
    answer_str = [model.to_string(t) for t in answer_tokens[0].tolist()]
    prompt_str = [model.to_string(t) for t in prompt_tokens[0].tolist()]
    header = [f"Tokenized prompt: {prompt_str}", f"Tokenized answer: {answer_str}"] if details else []
    lines: list[str] = []
    with torch.no_grad():
        logits = model(tokens)[0].float()  # [pos, d_vocab]
    probs = logits.softmax(-1)
    ranks = []
    for i, token in enumerate(answer_tokens[0].tolist()):
        row = n_prompt + i - 1  # the position that predicts this answer token
        order = probs[row].argsort(descending=True)
        rank = int((order == token).nonzero()[0, 0])
        ranks.append((answer_str[i], rank))
        if details:
            lines.append("Performance on answer token:")
            logit, prob = logits[row, token].item(), probs[row, token].item()
            lines.append(f"Rank: {rank: <8} Logit: {logit:5.2f} Prob: {prob:6.2%} Token: |{answer_str[i]}|")
            for k in range(min(top_k, order.shape[0])):
                t = int(order[k])
                lines.append(f"Top {k}th token. Logit: {logits[row, t].item():5.2f} Prob: {probs[row, t].item():6.2%} "
                             f"Token: |{model.to_string(t)}|")
    lines.append(f"Ranks of the answer tokens: {ranks}")
    return PromptReport(answer_ranks=ranks, text="\n".join(header + lines), prompt_str_tokens=prompt_str,
                        answer_str_tokens=answer_str, body="\n".join(lines))


def test_prompt(
    prompt: str, answer: str | list[str], model: Any, prepend_space_to_answer: bool = True,
    print_details: bool = True, prepend_bos: bool | None = None, top_k: int = 10,
) -> None:
    """Print :func:`prompt_report` for each answer (TransformerLens's ``utils.test_prompt``)."""
    for report in prompt_report(prompt, answer, model, prepend_space_to_answer, print_details, prepend_bos, top_k):
        print(report.text)  # noqa: T201  (printing the report is this function's job, as in TransformerLens)


test_prompt.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, whatever its name
