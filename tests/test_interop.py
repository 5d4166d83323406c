"""Export to Hugging Face GPT-2: `transformers` loads the directory and computes what we compute,
on real text that both tokenizers encode to the same ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from instructgpt.generate import SamplingConfig, generate
from instructgpt.interop import export_hf
from instructgpt.model import GPT, preset
from instructgpt.tokenizer import SPECIAL, TokenizerConfig, special_token_ids, train_tokenizer

transformers = pytest.importorskip("transformers")  # an optional extra: `pip install -e .[test]`

LOGITS_ATOL = 1e-4  # the bar; measured: 0 (exact GELU) and about 1e-6 (tanh GELU)


@pytest.fixture(scope="module")
def emma(data_pack: Path) -> str:
    return (data_pack / "books" / "austen" / "emma.txt").read_text(encoding="utf-8")[:400_000]


@pytest.fixture(scope="module")
def tokenizer(emma: str) -> Tokenizer:
    """A 2k byte-level BPE trained on the first 200 KB of Emma."""
    return train_tokenizer([emma[:200_000]], TokenizerConfig(vocab_size=2048))


def small_gpt(tokenizer: Tokenizer, **overrides: object) -> GPT:
    torch.manual_seed(0)
    return GPT(preset("cpu-small", vocab_size=tokenizer.get_vocab_size(), **overrides)).eval()


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_transformers_loads_the_export_and_gives_equal_logits(
    tmp_path: Path, tokenizer: Tokenizer, emma: str, activation: str
) -> None:
    model = small_gpt(tokenizer, activation=activation)
    out = export_hf(model, tokenizer, tmp_path / "hf")

    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_model.config.activation_function == {"gelu": "gelu", "gelu_tanh": "gelu_new"}[activation]

    text = emma[300_000:304_000]  # past the tokenizer's training text
    ids = tokenizer.encode(text).ids
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text
    batch = torch.tensor([ids[:256], ids[256:512]])
    with torch.no_grad():
        ours = model(batch).logits
        theirs = hf_model(batch).logits
    assert (ours - theirs).abs().max().item() < LOGITS_ATOL


def test_the_exported_tokenizer_knows_our_special_tokens(tmp_path: Path, tokenizer: Tokenizer) -> None:
    out = export_hf(small_gpt(tokenizer, n_layer=1), tokenizer, tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = special_token_ids(tokenizer)
    assert hf_tokenizer.eos_token_id == hf_tokenizer.bos_token_id == ids[SPECIAL.end_of_text]
    assert hf_tokenizer.pad_token_id == ids[SPECIAL.pad]
    text = f"{SPECIAL.user}Who is Emma?{SPECIAL.assistant}Miss Woodhouse.{SPECIAL.end_of_text}"
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).ids
    config = transformers.AutoConfig.from_pretrained(out)
    assert (config.eos_token_id, config.pad_token_id) == (ids[SPECIAL.end_of_text], ids[SPECIAL.pad])


def test_transformers_greedy_generate_matches_ours_on_left_padded_prompts(
    tmp_path: Path, tokenizer: Tokenizer, emma: str
) -> None:
    model = small_gpt(tokenizer, n_layer=2, init_std=0.1)  # peaked distributions: no near-ties
    out = export_hf(model, tokenizer, tmp_path / "hf")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = special_token_ids(tokenizer)
    pad = ids[SPECIAL.pad]
    words = tokenizer.encode(emma[310_000:311_000]).ids
    prompts = [words[:5], words[50:70], words[100:112]]
    ours = generate(model, prompts, SamplingConfig(max_new_tokens=12, temperature=0), eos_id=None, pad_id=pad)

    width = max(map(len, prompts))
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    hf_model.generation_config.eos_token_id = None  # run all 12 steps, as ours does with eos_id=None
    with torch.no_grad():
        theirs = hf_model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False, pad_token_id=pad
        )
    assert theirs[:, width:].tolist() == ours.tokens.tolist()


def test_a_model_without_biases_exports_with_zero_biases(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = small_gpt(tokenizer, n_layer=2, bias=False)
    out = export_hf(model, tokenizer, tmp_path / "hf")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    batch = torch.tensor([tokenizer.encode("Emma Woodhouse, handsome, clever, and rich").ids])
    with torch.no_grad():
        assert (model(batch).logits - hf_model(batch).logits).abs().max().item() < LOGITS_ATOL


@pytest.mark.parametrize(
    "overrides, reason",
    [(dict(ln_position="post"), "post-LN"), (dict(sparse_attention=True), "sparse")],
    ids=["post-LN (GPT-1)", "sparse attention (GPT-3)"],
)
def test_layouts_gpt2_cannot_express_are_refused(
    tmp_path: Path, tokenizer: Tokenizer, overrides: dict, reason: str
) -> None:
    model = small_gpt(tokenizer, n_layer=2, **overrides)
    with pytest.raises(ValueError, match=reason):
        export_hf(model, tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_the_library_does_not_import_transformers(repo_root: Path) -> None:
    import subprocess
    import sys

    code = "import sys, instructgpt.interop, instructgpt.generate; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, check=True)
    assert result.stdout.strip() == "False"
