"""The chat template: a prompt (one message or a transcript) and a response as token ids, with the
positions a supervised loss should train on.

    <|user|> first message <|assistant|> first answer <|user|> question <|assistant|> response <|endoftext|>

Role markers are the tokenizer's special tokens; message text is encoded as ordinary text, so a
message that quotes "<|assistant|>" cannot forge a turn. Only the final response and its
end-of-text are trained on (InstructGPT's SFT learns to answer, not to write prompts); earlier
assistant turns are context. Too long an example keeps its most recent context: whole turns are
dropped from the front of the prompt, then the prompt's text is cut from the left, and only a
response that cannot fit beside what is left of the prompt is cut (it then has no end-of-text).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from instructgpt.conversation import Turn, parse_prompt
from instructgpt.tokenizer import SPECIAL, encode_ordinary_batch, special_token_ids


@dataclass(frozen=True)
class Rendered:
    """Token ids of one example and, per position, whether the loss trains on that token."""

    ids: list[int]
    train_on: list[bool]

    def __len__(self) -> int:
        return len(self.ids)

    def targets(self, ignore: int = -100) -> list[int]:
        """Next-token targets aligned with `ids` (the label of position i is ids[i + 1])."""
        shifted = [t if keep else ignore for t, keep in zip(self.ids[1:], self.train_on[1:])]
        return shifted + [ignore]


class ChatTemplate:
    """Renders prompts and responses for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        ids = special_token_ids(tokenizer)
        self.marker = {"user": ids[SPECIAL.user], "assistant": ids[SPECIAL.assistant]}
        self.eot = ids[SPECIAL.end_of_text]

    def prompt_ids(self, prompt: str, max_len: int | None = None) -> list[int]:
        """The prompt ending in the assistant marker: what a model continues when it answers."""
        turns = parse_prompt(prompt)
        pieces = self._turns(turns) + [[self.marker["assistant"]]]
        return _fit_left(pieces, max_len)

    def render(self, prompt: str, response: str, max_len: int | None = None, min_prompt_tokens: int = 0) -> Rendered:
        """Prompt and response; `train_on` is True on the response tokens and the end-of-text.

        A response too long to fit beside its prompt is cut at the end, leaving the prompt
        `min_prompt_tokens` (or its whole length, if shorter), and at least the user marker, one
        prompt token and the assistant marker: a long answer should not leave its question unread.
        """
        answer = encode_ordinary_batch(self.tokenizer, [response])[0] + [self.eot]
        if max_len is not None:
            reserve = 3  # the user marker, one prompt token, the assistant marker
            if min_prompt_tokens > reserve and len(answer) > max_len - reserve:
                reserve = min(len(self.prompt_ids(prompt)), min_prompt_tokens, max_len - 1)
            if len(answer) > max_len - reserve:
                answer = answer[: max_len - reserve]
        prompt_ids = self.prompt_ids(prompt, None if max_len is None else max_len - len(answer))
        return Rendered(prompt_ids + answer, [False] * len(prompt_ids) + [True] * len(answer))

    def _turns(self, turns: list[Turn]) -> list[list[int]]:
        texts = encode_ordinary_batch(self.tokenizer, [t.text for t in turns])
        return [[self.marker[t.role], *ids] for t, ids in zip(turns, texts)]


def _fit_left(pieces: list[list[int]], max_len: int | None) -> list[int]:
    """Concatenate pieces, dropping whole pieces from the front, then cutting the first one's left."""
    if max_len is None:
        return [i for piece in pieces for i in piece]
    kept: list[list[int]] = []
    room = max_len
    for piece in reversed(pieces):
        if len(piece) <= room:
            kept.insert(0, piece)
            room -= len(piece)
            continue
        if room > 1:  # keep the role marker, then as much of the text's end as fits
            kept.insert(0, [piece[0], *piece[len(piece) - room + 1 :]])
        break
    return [i for piece in kept for i in piece]
