"""Sampling throughput: our KV-cache `generate` against `transformers`' `generate`, same weights, prompts and lengths.

Builds the pipeline's model shape (4 layers x 256 wide, 4 heads, vocab 8,192, context 256) with
seeded random weights, exports it with `instructgpt.interop.export_hf` and loads that directory
with `transformers.GPT2LMHeadModel`, so both sides run the same weights. 16 prompts of 32 tokens
(real text: Emma, encoded by the pipeline's tokenizer, or an 8k BPE trained here when it is
missing) each get exactly 128 new tokens: end-of-text is disabled on both sides for the timing.
Prints new tokens per second (best of N interleaved rounds) for:

  (a) ours, KV cache: greedy, and sampled (temperature 0.8, top-k 50, top-p 0.95);
  (b) ours without a cache (the whole sequence again at every step), greedy;
  (c) transformers `generate(use_cache=True)`, greedy and sampled with the same settings;

and the ratio (a) / (c) for each, and how many greedy tokens the two implementations share; then

  (d) ours with end-of-text on and rows ending at spread-out lengths, finished rows dropped from
      the batch or kept (end-of-text is a token whose embedding is scaled up 10x in a copy of the
      model, so that sampled rows end after 2 to 128 tokens; the output is identical both ways).

    .venv/bin/python benchmarks/sample.py [--repeats 5] [--threads 2] [--batch 16] [--prompt-len 32] [--new 128]

`transformers` is the `test` extra (`pip install -e .[test]`), not a dependency of the library.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from timing import best_of

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INSTRUCTGPT_DATA_MIRROR", ROOT.parent / "shared" / "data"))
PIPELINE_TOKENIZER = ROOT / "data" / "tokenizer" / "tokenizer.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="best of this many interleaved rounds")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=16, help="prompts per batch")
    parser.add_argument("--prompt-len", type=int, default=32, help="tokens per prompt")
    parser.add_argument("--new", type=int, default=128, help="new tokens per prompt")
    parser.add_argument("--uncached-repeats", type=int, default=2, help="rounds for (b), which is slow")
    args = parser.parse_args()

    import torch
    import transformers

    from instructgpt.generate import SamplingConfig, generate
    from instructgpt.interop import export_hf
    from instructgpt.model import GPT, preset
    from instructgpt.tokenizer import SPECIAL, TokenizerConfig, load_tokenizer, special_token_ids, train_tokenizer

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")

    emma = (DATA / "books" / "austen" / "emma.txt").read_text(encoding="utf-8")
    if PIPELINE_TOKENIZER.exists() and load_tokenizer(PIPELINE_TOKENIZER).get_vocab_size() == 8192:
        tokenizer, tokenizer_from = load_tokenizer(PIPELINE_TOKENIZER), str(PIPELINE_TOKENIZER.relative_to(ROOT))
    else:
        tokenizer, tokenizer_from = train_tokenizer([emma], TokenizerConfig(vocab_size=8192)), "trained on Emma here"
    ids = special_token_ids(tokenizer)
    pad = ids[SPECIAL.pad]
    words = tokenizer.encode(emma).ids
    stride = len(words) // args.batch
    prompts = [words[i * stride : i * stride + args.prompt_len] for i in range(args.batch)]

    torch.manual_seed(0)
    model = GPT(preset("cpu-small", vocab_size=8192)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(export_hf(model, tokenizer, Path(tmp) / "hf")).eval()
    hf_model.generation_config.eos_token_id = None  # exactly `new` tokens, as ours with eos_id=None
    input_ids = torch.tensor(prompts)
    attention_mask = torch.ones_like(input_ids)

    greedy = SamplingConfig(max_new_tokens=args.new, temperature=0)
    sampled = SamplingConfig(max_new_tokens=args.new, temperature=0.8, top_k=50, top_p=0.95, seed=0)
    hf_greedy = dict(do_sample=False)
    hf_sampled = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95)

    def ours(config: SamplingConfig, use_cache: bool = True) -> Callable[[], object]:
        return lambda: generate(model, prompts, config, eos_id=None, pad_id=pad, use_cache=use_cache).tokens

    def theirs(settings: dict) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                out = hf_model.generate(
                    input_ids, attention_mask=attention_mask, max_new_tokens=args.new, use_cache=True,
                    pad_token_id=pad, **settings,
                )
            return out[:, input_ids.shape[1] :]
        return run

    contenders = {
        "(a) ours, KV cache, greedy": ours(greedy),
        "(a) ours, KV cache, sampled": ours(sampled),
        "(c) transformers generate, greedy": theirs(hf_greedy),
        "(c) transformers generate, sampled": theirs(hf_sampled),
    }
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; torch threads: {torch.get_num_threads()}"
    )
    print(
        f"model: 4 layers x 256, 4 heads, vocab 8192, context 256, fp32, seeded random weights; tokenizer: "
        f"{tokenizer_from}; {args.batch} prompts x {args.prompt_len} tokens of Emma, {args.new} new tokens each "
        f"(end-of-text off); best of {args.repeats} interleaved rounds\n"
    )
    outputs = {name: run() for name, run in contenders.items()}  # warm-up, and the tokens to compare
    for name, tokens in outputs.items():
        assert tuple(tokens.shape) == (args.batch, args.new), f"{name} made {tuple(tokens.shape)} tokens"
    seconds = dict(zip(contenders, best_of(list(contenders.values()), args.repeats)))
    uncached = "(b) ours, no cache, greedy"
    seconds[uncached] = best_of([ours(greedy, use_cache=False)], args.uncached_repeats)[0]

    new_tokens = args.batch * args.new
    width = max(map(len, seconds))
    for name in [*list(contenders)[:2], uncached, *list(contenders)[2:]]:
        print(f"{name:<{width}}  {new_tokens / seconds[name]:8.0f} new tok/s  ({seconds[name] * 1e3:7.1f} ms)")
    names = list(contenders)
    for mode, a, c in (("greedy", names[0], names[2]), ("sampled", names[1], names[3])):
        print(f"ratio ours / transformers, {mode}: {seconds[c] / seconds[a]:.2f}")
    print(f"ratio ours with / without the cache, greedy: {seconds[uncached] / seconds[names[0]]:.2f}")
    same = (outputs[names[0]] == outputs[names[2]]).float().mean().item()
    agree = (outputs[names[0]] == outputs[names[2]]).all(dim=1).sum().item()
    print(
        f"greedy tokens shared with transformers: {same:.1%} ({agree}/{args.batch} sequences identical; random "
        "weights give near-uniform logits, where float rounding can flip a near-tie and the rest diverges)"
    )

    # (d) Rows that end early: drop them from the batch, or keep them (emitting masked padding).
    eos = 3
    ending = GPT(model.config).eval()
    ending.load_state_dict(model.state_dict())
    with torch.no_grad():
        ending.transformer.wte.weight[eos] *= 10.0
    config = SamplingConfig(max_new_tokens=args.new, temperature=0.7, seed=0)
    runs = {
        drop: (lambda drop=drop: generate(ending, prompts, config, eos_id=eos, pad_id=pad, drop_finished=drop))
        for drop in (True, False)
    }
    lengths = runs[True]().lengths
    assert torch.equal(runs[True]().tokens, runs[False]().tokens)
    drop_s, keep_s = best_of([runs[True], runs[False]], args.repeats)
    print(
        f"\n(d) rows ending after {lengths.min().item()} to {lengths.max().item()} tokens (median "
        f"{lengths.median().item()}): finished rows dropped {drop_s * 1e3:.1f} ms, kept {keep_s * 1e3:.1f} ms; "
        f"dropping is {keep_s / drop_s:.2f}x as fast, same tokens"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
