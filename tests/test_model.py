"""The GPT: preset sizes against the papers, the two LayerNorm layouts, the KV cache, left padding,
banded attention, tied embeddings and the scaled residual initialisation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from instructgpt.model import GPT, PRESETS, PUBLISHED_PARAMS_M, GPTConfig, Linear, causal_mask, preset

TOL = 1e-5  # fp32: the cached and the full forward sum the same terms in a different order


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_preset_parameter_counts_match_the_papers(name: str) -> None:
    with torch.device("meta"):  # no memory is allocated, even for 175B
        model = GPT(preset(name))
    published = PUBLISHED_PARAMS_M[name] * 1e6
    assert abs(model.num_params() - published) / published < 0.02, model.num_params()


def test_preset_layouts() -> None:
    assert preset("gpt1").ln_position == "post" and preset("gpt1").context == 512
    assert preset("gpt2-small").ln_position == "pre" and preset("gpt2-small").context == 1024
    assert preset("gpt3-175b").context == 2048 and preset("gpt3-175b").n_embd == 12288
    assert set(PRESETS) >= {"gpt1", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-small", "cpu-tiny"}
    with pytest.raises(KeyError, match="unknown preset"):
        preset("gpt4")
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(n_embd=100, n_head=3)


def _model(**overrides: object) -> GPT:
    torch.manual_seed(0)
    return GPT(preset("cpu-tiny", vocab_size=97, **overrides)).eval()


@pytest.mark.parametrize("overrides", [{}, {"ln_position": "post"}, {"sparse_attention": True, "local_window": 5}])
def test_cached_logits_equal_full_recomputation(overrides: dict) -> None:
    model = _model(**overrides)
    ids = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))
    full = model(ids).logits
    cache = model.new_cache(3, 32)
    steps = [model(ids[:, :10], cache=cache).logits] + [model(ids[:, t : t + 1], cache=cache).logits for t in range(10, 24)]
    assert cache.length == 24
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < TOL


def test_left_padding_gives_each_prompt_its_own_logits() -> None:
    model = _model()
    short, long = torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 11))
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long])
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, :5] = 0
    out = model(batch, attention_mask=mask).logits
    assert (out[0, 5:] - model(short).logits[0]).abs().max().item() < TOL
    assert (out[1] - model(long).logits[0]).abs().max().item() < TOL


def test_banded_layers_forget_beyond_the_window() -> None:
    model = _model(sparse_attention=True, local_window=4)
    ids = torch.randint(0, 97, (1, 20))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 97
    # with 2 layers (dense, banded) position 19 still sees position 0 through the dense layer...
    assert not torch.allclose(model(ids).logits[0, 19], model(changed).logits[0, 19])
    # ...while the banded layer's mask itself excludes keys more than 4 back
    block = model.transformer.h[1].attn
    assert block.window == 4 and model.transformer.h[0].attn.window is None


def test_causal_mask_with_a_past() -> None:
    mask = causal_mask(2, 5, torch.device("cpu"))[0, 0]
    assert mask.tolist() == [[True, True, True, True, False], [True] * 5]


def test_tied_embeddings_and_scaled_residual_init() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=500, n_layer=8, n_head=4, n_embd=128, context=64))
    assert model.lm_head.weight is model.transformer.wte.weight
    proj = model.transformer.h[0].attn.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert fc == pytest.approx(0.02, rel=0.1)
    assert proj == pytest.approx(0.02 / math.sqrt(16), rel=0.1)


def test_loss_ignores_minus_100_and_hidden_states_are_returned() -> None:
    model = _model()
    ids = torch.randint(0, 97, (2, 8))
    targets = ids.roll(-1, 1)
    targets[:, -1] = -100
    out = model(ids, targets)
    assert out.hidden.shape == (2, 8, 64)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 97), targets[:, :-1].reshape(-1))
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-6)
    assert model(ids, logits=False).logits is None


def test_weight_decay_groups_hold_matrices_only() -> None:
    decay, no_decay = _model().optimizer_groups(0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_context_is_enforced() -> None:
    with pytest.raises(ValueError, match="exceeds the context"):
        _model()(torch.zeros(1, 129, dtype=torch.long))


def test_onednn_linear_matches_f_linear_in_values_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    for in_features, out_features, bias in [(48, 160, True), (160, 48, True), (64, 64, False)]:
        ours = Linear(in_features, out_features, bias=bias)
        x = torch.randn(3, 7, in_features, requires_grad=True)
        y = ours(x)
        assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"  # the fast path was taken
        grads = torch.autograd.grad(y, [x, *ours.parameters()], torch.ones_like(y))
        reference = torch.nn.functional.linear(x, ours.weight, ours.bias)
        expected = torch.autograd.grad(reference, [x, *ours.parameters()], torch.ones_like(y))
        assert (y - reference).abs().max().item() < TOL
        for got, want in zip(grads, expected):
            assert got.shape == want.shape and (got - want).abs().max().item() < 1e-4
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast and a disabled oneDNN take F.linear
        assert ours(x).dtype == torch.bfloat16
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert type(ours(x).grad_fn).__name__ != "_OneDNNLinearBackward"


def test_attention_dropout_follows_dropout_unless_set() -> None:
    assert GPTConfig(dropout=0.1).attention_dropout == 0.1  # GPT-1: one rate for all three
    assert GPTConfig(dropout=0.2, attn_dropout=0.0).attention_dropout == 0.0  # InstructGPT SFT: residual only
    assert GPTConfig(attn_dropout=0.3).attention_dropout == 0.3
    with pytest.raises(ValueError, match="attn_dropout must be within"):
        GPTConfig(attn_dropout=1.0)


def _attention_kernels(model: GPT) -> set[str]:
    x = torch.randint(0, 256, (2, 32))
    with torch.profiler.profile() as prof:
        model(x, x).loss.backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_attention_dropout_alone_decides_the_attention_kernel_and_its_noise() -> None:
    torch.manual_seed(0)
    residual_only = GPT(preset("cpu-tiny", vocab_size=256, dropout=0.2, attn_dropout=0.0)).train()
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in _attention_kernels(residual_only)
    with_attention = GPT(replace(residual_only.config, attn_dropout=0.2)).train()
    assert "aten::_scaled_dot_product_attention_math" in _attention_kernels(with_attention)
    # Attention dropout with nothing else: training-mode outputs vary, eval-mode ones do not.
    only_attention = GPT(preset("cpu-tiny", vocab_size=256, dropout=0.0, attn_dropout=0.5)).train()
    x = torch.randint(0, 256, (2, 32))
    assert not torch.equal(only_attention(x).logits, only_attention(x).logits)
    only_attention.eval()
    assert torch.equal(only_attention(x).logits, only_attention(x).logits)
    none = GPT(preset("cpu-tiny", vocab_size=256, dropout=0.0, attn_dropout=None)).train()
    assert torch.equal(none(x).logits, none(x).logits)
