"""Sampling from a GPT: batched, with a KV cache, temperature, top-k and nucleus (top-p) sampling.

Prompts of different lengths share one batch by left padding: every row's last prompt token sits
in the last column, so one forward over the padded prompts (the prefill) fills the cache and gives
every row's next-token logits at once; then each step feeds one token per row. The attention mask
keeps padding out of attention, and position ids are counted over real tokens only, so a prompt
gets exactly the tokens it would get alone (greedy; see the tests).

A row stops at end-of-text: the end-of-text token is its last new token, and afterwards it is
padding, masked out (`Generation.mask`). Once half the rows still in the batch have ended they are
dropped from it (`KVCache.reorder`): 10-20% faster on 2 CPU cores when lengths vary. The output
does not depend on it (beyond float rounding in a smaller batch): every prompt draws its own
uniform number at every step.

With `return_logprobs=True` each new token also gets its log-probability under the distribution
PPO's policy is: softmax(logits / temperature), before top-k and top-p (at temperature 0, under
softmax(logits)). It costs one logsumexp per step (about 2% of a step).

The loop itself costs nothing measurable over bare model calls; on a CPU a step is the model's
matmuls and attention, bound by memory traffic (see `benchmarks/sample.py` for the figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from instructgpt.model import GPT


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each new token. The defaults sample from the model's own distribution.

    temperature: logits are divided by it; 0 picks the most likely token (greedy).
    top_k: sample among the k most likely tokens only; 0 = all.
    top_p: sample from the smallest set of most likely tokens whose probability reaches top_p
        (nucleus sampling, after top-k); 1.0 = all. Without a top-k it sorts the whole vocabulary
        at every step, which torch does slowly on CPUs (4-6 ms for 16 x 8,192, more than the
        model's step); with one, only the k candidates are sorted.
    seed: seeds a fresh `torch.Generator`, so the same prompts give the same output; None uses
        the generator passed to `generate`, or else torch's global one.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be 0 (greedy) or positive")
        if self.top_k < 0:
            raise ValueError("top_k must be 0 (off) or positive")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be within (0, 1]; 1.0 turns it off")


@dataclass(frozen=True)
class Generation:
    """New tokens per prompt, padded to the longest: row b's are `tokens[b, : lengths[b]]`.

    tokens: [B, N] long, N = the longest length; `pad_id` after a row's end.
    lengths: [B] long, new tokens per row, its end-of-text included.
    ended: [B] bool, True where the row stopped at end-of-text, False where max_new_tokens cut it.
    logprobs: [B, N] float32 log-probability of each new token under softmax(logits / temperature)
        (0 after a row's end); None unless asked for.
    """

    tokens: Tensor
    lengths: Tensor
    ended: Tensor
    logprobs: Tensor | None = None

    @property
    def mask(self) -> Tensor:
        """[B, N] bool, True for the tokens a row generated."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device) < self.lengths[:, None]

    def sequences(self) -> list[list[int]]:
        """Each row's new tokens as a list, end-of-text included where it ended."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths.tolist())]


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Token ids [B, P] with each prompt at the right end, and the mask [B, P] (1 = a real token)."""
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    width = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token (start with end-of-text for none)")
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> tuple[Tensor, Tensor | None]:
    """The candidates to sample among: (scores [B, K], their token ids [B, K] or None for all).

    Top-k keeps the k highest scores; top-p then keeps, in descending order, each token whose
    predecessors' probability (renormalised over what top-k kept) is still below top_p, so the
    most likely token always stays. Removed candidates get a score of -inf. Candidates come back
    sorted only when one of the two is on; with neither, `logits` is returned as it is.
    """
    if top_k == 0 and top_p >= 1.0:
        return logits, None
    if top_k:
        scores, ids = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # sorted, descending
    else:
        scores, ids = logits.sort(dim=-1, descending=True)
    if top_p < 1.0:
        probs = scores.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the more likely candidates
        scores = scores.masked_fill(before >= top_p, float("-inf"))
    return scores, ids


def sample(probs: Tensor, uniform: Tensor) -> Tensor:
    """One index per row of `probs` [B, K] (non-negative, any scale): its inverse CDF at `uniform` [B] in [0, 1).

    Exact, and cheap: one uniform number per row. (torch.multinomial draws an exponential per
    candidate, 2 ms a step for 16 x 8,192 on a CPU, most of a decode step's time.) Candidates of
    probability 0 are never picked: the draw is kept strictly below the total, and searchsorted
    with right=True returns the first index whose cumulative sum exceeds it.
    """
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    draw = torch.minimum(uniform[:, None].to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, draw, right=True).squeeze(1)


def pick_tokens(
    logits: Tensor, config: SamplingConfig, uniform: Tensor | None, want_logprobs: bool
) -> tuple[Tensor, Tensor | None]:
    """One token per row from next-token logits [B, V]; and its log-probability if asked.

    uniform: [B] draws in [0, 1), one per row (unused when greedy). The log-probability is under
    softmax(logits / temperature), before top-k and top-p (greedy: under softmax(logits)).
    """
    logits = logits.float()
    if config.temperature == 0:
        tokens = logits.argmax(dim=-1)
        scaled = logits
    else:
        if uniform is None:
            raise ValueError("sampling at a temperature above 0 needs uniform draws")
        scaled = logits / config.temperature if config.temperature != 1.0 else logits
        scores, ids = filter_logits(scaled, config.top_k, config.top_p)
        choice = sample(scores.softmax(dim=-1), uniform)
        tokens = ids.gather(1, choice[:, None]).squeeze(1) if ids is not None else choice
    if not want_logprobs:
        return tokens, None
    logprobs = scaled.gather(1, tokens[:, None]).squeeze(1) - scaled.logsumexp(dim=-1)
    return tokens, logprobs


class _CachedSteps:
    """Next-token logits from a KV cache: one forward over the prompts, then one token per step."""

    def __init__(self, model: GPT, ids: Tensor, mask: Tensor, new_tokens: int) -> None:
        self.model = model
        self.cache = model.new_cache(ids.shape[0], ids.shape[1] + new_tokens - 1)
        self.prompt, self.prompt_mask = ids, mask
        self.position = mask.sum(dim=1, keepdim=True)  # [B, 1]: the next token's position

    def first(self) -> Tensor:
        positions = (self.prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.model(
            self.prompt, attention_mask=self.prompt_mask, position_ids=positions, cache=self.cache, logits=False
        ).hidden
        return self.model.lm_head(hidden[:, -1])  # only the last column's logits are needed

    def next(self, tokens: Tensor) -> Tensor:
        # No attention mask: new positions are real tokens for every row (finished rows' pad
        # outputs are never read), and the cache remembers the prompts' left padding.
        hidden = self.model(tokens[:, None], position_ids=self.position, cache=self.cache, logits=False).hidden
        self.position = self.position + 1
        return self.model.lm_head(hidden[:, -1])

    def keep(self, rows: Tensor) -> None:
        self.cache.reorder(rows)
        self.position = self.position[rows]


class _RecomputedSteps:
    """The same logits without a cache: the whole sequence again at every step (the reference)."""

    def __init__(self, model: GPT, ids: Tensor, mask: Tensor, new_tokens: int) -> None:
        self.model, self.ids, self.mask = model, ids, mask

    def first(self) -> Tensor:
        hidden = self.model(self.ids, attention_mask=self.mask, logits=False).hidden
        return self.model.lm_head(hidden[:, -1])

    def next(self, tokens: Tensor) -> Tensor:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self.first()

    def keep(self, rows: Tensor) -> None:
        self.ids, self.mask = self.ids[rows], self.mask[rows]


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    *,
    eos_id: int | None,
    pad_id: int,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    use_cache: bool = True,
    drop_finished: bool = True,
) -> Generation:
    """Continue each prompt (token ids) until end-of-text or `config.max_new_tokens` new tokens.

    eos_id: the token that ends a sequence (end-of-text); None never stops early (benchmarks).
    pad_id: fills prompts on the left and finished rows on the right; never attended to.
    generator: the random stream to sample from, when `config.seed` is None.
    return_logprobs: also return each new token's log-probability (see `Generation`).
    use_cache: False recomputes the whole sequence at every step: the slow reference, same output.
    drop_finished: once half the rows still in the batch have ended, drop them (`KVCache.reorder`).
        The output is the same either way: each prompt draws its own uniform number every step.

    The model is put in eval mode for the call and restored after. Results are ordinary tensors
    (not inference-mode ones), so they can feed a training forward.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = _generate(
                model, prompts, config, eos_id, pad_id, generator, return_logprobs, use_cache, drop_finished
            )
    finally:
        model.train(was_training)
    # Inference tensors cannot be saved for backward: hand out ordinary copies (they are small).
    return Generation(*(t.clone() if t is not None else None for t in out))


def _generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    eos_id: int | None,
    pad_id: int,
    generator: torch.Generator | None,
    want_logprobs: bool,
    use_cache: bool,
    drop_finished: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    device = model.lm_head.weight.device
    ids, mask = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    n = config.max_new_tokens
    if P + n - 1 > model.config.context:
        raise ValueError(
            f"the longest prompt ({P} tokens) plus max_new_tokens ({n}) - 1 exceeds the model's context "
            f"of {model.config.context}: shorten the prompts or lower max_new_tokens"
        )
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)

    steps = (_CachedSteps if use_cache else _RecomputedSteps)(model, ids, mask, n)
    tokens = torch.full((B, n), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, n), dtype=torch.float32, device=device) if want_logprobs else None
    rows = torch.arange(B, device=device)  # the batch's rows, as indices into the prompts
    done = torch.zeros(B, dtype=torch.bool, device=device)  # per row of the batch
    # Counting finished rows is a host sync: free on a CPU, a stall on a GPU, so done less often there.
    check_every = 1 if device.type == "cpu" else 8
    logits = steps.first()
    for t in range(n):
        # One draw per prompt, whichever rows are still in the batch: the output cannot depend on it.
        uniform = torch.rand(B, generator=generator, device=device)[rows] if config.temperature > 0 else None
        token, logprob = pick_tokens(logits, config, uniform, want_logprobs)
        token = token.masked_fill(done, pad_id)
        tokens[rows, t] = token
        if logprobs is not None:
            logprobs[rows, t] = logprob
        if t == n - 1:
            break
        if eos_id is not None:
            done |= token == eos_id
            if (t + 1) % check_every == 0:
                finished = int(done.sum())
                if finished == len(rows):
                    break
                if drop_finished and 2 * finished >= len(rows):
                    keep = (~done).nonzero().squeeze(1)
                    steps.keep(keep)
                    rows, done, token = rows[keep], done[keep], token[keep]
        logits = steps.next(token)
    tokens = tokens[:, : t + 1]
    lengths, ended = _lengths(tokens, eos_id)
    if logprobs is not None:
        logprobs = logprobs[:, : t + 1].masked_fill(torch.arange(t + 1, device=device) >= lengths[:, None], 0.0)
    width = int(lengths.max())
    return tokens[:, :width], lengths, ended, logprobs[:, :width] if logprobs is not None else None


def _lengths(tokens: Tensor, eos_id: int | None) -> tuple[Tensor, Tensor]:
    """New tokens per row (up to and including its first end-of-text) and whether it ended."""
    B, N = tokens.shape
    if eos_id is None:
        return torch.full((B,), N, device=tokens.device), torch.zeros(B, dtype=torch.bool, device=tokens.device)
    is_eos = tokens == eos_id
    ended = is_eos.any(dim=1)
    first = is_eos.int().argmax(dim=1)  # the first end-of-text (argmax returns the first maximum)
    return torch.where(ended, first + 1, N), ended
