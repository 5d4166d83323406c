"""The GPT: a decoder-only transformer, as the GPT-1, GPT-2 and GPT-3 papers describe it.

Token and learned position embeddings; a stack of blocks, each masked (causal) multi-head
self-attention then a GELU MLP, with residual connections; a final LayerNorm (pre-LN models); and
an output layer tied to the token embedding. GPT-1 puts LayerNorm after each residual addition
(post-LN); GPT-2 moved it to the input of each sub-block and added one after the last block
(pre-LN), and scaled the residual projections' initialisation by 1/sqrt(2 * layers); GPT-3 is
GPT-2 with alternating dense and locally banded sparse attention layers.

Attention goes through `torch.nn.functional.scaled_dot_product_attention`: flash or memory-efficient
kernels on GPUs, a fused kernel on CPUs. Without padding or a cache the call is `is_causal=True`;
with them (sampling, left-padded prompts) an explicit boolean mask is built once per forward.
On CPUs the fp32 linear layers multiply through oneDNN rather than MKL (`Linear`, below): the same
parameters and arithmetic, twice as fast on AMD processors.

The forward pass returns the hidden states as well as the logits, so that reward, value and task
heads read the same representation. Parameter names follow Hugging Face's GPT-2 (`transformer.h.0
.attn.c_attn`...) so that export is a renaming, not a translation (HF stores Conv1D weights
transposed; `instructgpt.interop` handles that).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GPTConfig:
    """Architecture. `d_ff` defaults to 4 x width; `local_window` is the band of sparse layers."""

    vocab_size: int = 8192
    context: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    d_ff: int | None = None
    dropout: float = 0.0  # on embeddings and residual branches (and attention weights, see below)
    attn_dropout: float | None = None  # on attention weights; None = `dropout` (GPT-1 used 0.1 on all three)
    ln_position: Literal["pre", "post"] = "pre"  # GPT-1: post; GPT-2/3: pre
    scale_residual_init: bool = True  # GPT-2: residual projections ~ N(0, 0.02 / sqrt(2 * n_layer))
    sparse_attention: bool = False  # GPT-3: odd layers attend within a local band only
    local_window: int = 128
    bias: bool = True
    activation: Literal["gelu", "gelu_tanh"] = "gelu"  # exact GELU; GPT-2 used the tanh approximation
    init_std: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        for name in ("vocab_size", "context", "n_layer", "n_head", "n_embd", "local_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        for name in ("dropout", "attn_dropout"):
            rate = getattr(self, name)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be within [0, 1)")

    @property
    def attention_dropout(self) -> float:
        """The rate on attention weights. Apart because it costs more than the others on a CPU: with
        it, `scaled_dot_product_attention` leaves its fused kernel for one that materialises the
        T x T weights (InstructGPT's SFT names residual dropout only)."""
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def ffn(self) -> int:
        return self.d_ff or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def is_sparse(self, layer: int) -> bool:
        """GPT-3 alternates dense and locally banded layers: layers 1, 3, 5... are banded."""
        return self.sparse_attention and layer % 2 == 1

    def to_dict(self) -> dict:
        return asdict(self)


# GPT-1 used a 40,000-merge BPE (40,478 tokens with its base symbols); GPT-2 and GPT-3 50,257.
_GPT2 = dict(vocab_size=50257, context=1024, ln_position="pre", scale_residual_init=True, activation="gelu_tanh")
_GPT3 = dict(vocab_size=50257, context=2048, ln_position="pre", scale_residual_init=True, activation="gelu_tanh")

PRESETS: dict[str, dict] = {
    # GPT-1 (Radford et al. 2018): 12 x 768, 12 heads, context 512, post-LN; 117M.
    "gpt1": dict(vocab_size=40478, context=512, n_layer=12, n_head=12, n_embd=768, ln_position="post",
                 scale_residual_init=False, dropout=0.1, activation="gelu_tanh"),
    # GPT-2 (Radford et al. 2019): 124M, 350M, 774M, 1.5B.
    "gpt2-small": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    # GPT-3 (Brown et al. 2020), Table 2.1. Two rows of the paper's table do not add up: XL lists
    # 24 heads of 128 for a width of 2,048 (we use 16 heads of 128), and 13B lists a width of 5,140
    # with 40 heads of 128 (we use 5,120 = 40 x 128); the parameter counts are unchanged to 1%.
    "gpt3-small": dict(_GPT3, n_layer=12, n_head=12, n_embd=768),
    "gpt3-medium": dict(_GPT3, n_layer=24, n_head=16, n_embd=1024),
    "gpt3-large": dict(_GPT3, n_layer=24, n_head=16, n_embd=1536),
    "gpt3-xl": dict(_GPT3, n_layer=24, n_head=16, n_embd=2048),
    "gpt3-2.7b": dict(_GPT3, n_layer=32, n_head=32, n_embd=2560),
    "gpt3-6.7b": dict(_GPT3, n_layer=32, n_head=32, n_embd=4096),
    "gpt3-13b": dict(_GPT3, n_layer=40, n_head=40, n_embd=5120),
    "gpt3-175b": dict(_GPT3, n_layer=96, n_head=96, n_embd=12288),
    # Small models for CPUs: the default pipeline and the tests.
    "cpu-small": dict(context=256, n_layer=4, n_head=4, n_embd=256),
    "cpu-tiny": dict(context=128, n_layer=2, n_head=2, n_embd=64),
}

# What each paper reports, for the tests (millions of parameters).
PUBLISHED_PARAMS_M = {
    "gpt1": 117, "gpt2-small": 124, "gpt2-medium": 350, "gpt2-large": 774, "gpt2-xl": 1558,
    "gpt3-small": 125, "gpt3-medium": 350, "gpt3-large": 760, "gpt3-xl": 1300, "gpt3-2.7b": 2700,
    "gpt3-6.7b": 6700, "gpt3-13b": 13000, "gpt3-175b": 175000,
}


def preset(name: str, **overrides: object) -> GPTConfig:
    """A named configuration, with any field overridden (e.g. the tokenizer's vocab_size)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset '{name}'; presets: {sorted(PRESETS)}")
    return replace(GPTConfig(**PRESETS[name]), **overrides)  # type: ignore[arg-type]


class ModelOutput(NamedTuple):
    logits: Tensor | None  # [B, T, vocab]; None when only hidden states were asked for
    hidden: Tensor  # [B, T, n_embd]: the final representation (after the final LayerNorm, pre-LN)
    loss: Tensor | None  # mean next-token cross-entropy over targets != -100, when targets are given


class KVCache:
    """Keys and values of past positions, preallocated per layer: [B, heads, max_len, head_dim].

    `length` positions are filled; a forward with a cache appends its T positions and attends to
    all `length + T`. `mask` ([B, max_len], True = a real token) remembers left padding.
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (batch, config.n_head, max_len, config.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.mask = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.max_len = max_len

    def reorder(self, index: Tensor) -> None:
        """Keep only the batch rows in `index` (e.g. drop finished sequences)."""
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        self.mask = self.mask[index]


# PyTorch multiplies fp32 matrices on a CPU with MKL, which runs only its AVX2 kernels on AMD
# processors; oneDNN, which PyTorch also ships, picks kernels by the CPU's features and runs AVX-512
# ones. On the development machine (AMD EPYC, Zen 5, 2 cores) that is 2.2x the fp32 GFLOP/s and 1.5x
# the whole training step (BENCHMARKS.md); Intel CPUs, where MKL has AVX-512 kernels too, are not
# measured. The op is the one torch.compile's CPU backend emits for linear layers with frozen
# weights; it computes `a @ b.T + bias` in fp32 like `F.linear`, and has no autograd formula, hence
# `_OneDNNLinear`. `torch.backends.mkldnn.enabled = False` switches it off.
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _onednn_mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    return _onednn_linear(a, b, bias, "none", [], "")


# `a @ b.T` through oneDNN for the hardware probe (instructgpt.hardware), or None where it is absent.
fast_cpu_matmul = _onednn_mm if _onednn_linear is not None else None


class _OneDNNLinear(torch.autograd.Function):
    """`F.linear(x, weight, bias)` and its gradients, each product one oneDNN call."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_mm(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        x2d = x.reshape(-1, x.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_mm(grad, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            # grad.T @ x. oneDNN copies a transposed first operand to make it contiguous: let that
            # be the narrower of x and grad.
            if weight.shape[0] >= weight.shape[1]:
                grad_weight = _onednn_mm(x2d.t(), grad.t()).t()
            else:
                grad_weight = _onednn_mm(grad.t(), x2d.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    """`nn.Linear`, whose fp32 products on a CPU go through oneDNN (see above); same parameters."""

    def forward(self, x: Tensor) -> Tensor:
        # torch.compile lowers this op only for frozen (inference) weights; it picks its own kernels
        if (_onednn_linear is not None and x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32
                and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling()):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return super().forward(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual = True  # type: ignore[attr-defined]  # scaled init, see GPT._init_weights
        self.dropout = config.attention_dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.window = config.local_window if config.is_sparse(layer) else None
        self.layer = layer

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            start = cache.length
            cache.keys[self.layer][:, :, start : start + T] = k
            cache.values[self.layer][:, :, start : start + T] = v
            k = cache.keys[self.layer][:, :, : start + T]
            v = cache.values[self.layer][:, :, : start + T]
        dropout = self.dropout if self.training else 0.0
        band = mask_for_layer(mask, self.window, T, k.shape[2], x.device)
        if band is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=dropout)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


def mask_for_layer(mask: Tensor | None, window: int | None, q_len: int, k_len: int, device: torch.device) -> Tensor | None:
    """The boolean attention mask ([B or 1, 1, q_len, k_len], True = may attend), or None for plain causal.

    `mask` is the causal-and-padding mask shared by all layers (None when there is neither padding
    nor cache); a banded layer additionally forgets keys more than `window` positions back.
    """
    if mask is None and window is None:
        return None
    if mask is None:
        mask = causal_mask(q_len, k_len, device)
    if window is not None:
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        mask = mask & (q_pos - k_pos < window)
    return mask


def causal_mask(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """[1, 1, q_len, k_len]: query i (the last q_len of k_len positions) sees keys up to itself."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)[None, None]


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.ffn, bias=config.bias)
        self.c_proj = Linear(config.ffn, config.n_embd, bias=config.bias)
        self.c_proj.residual = True  # type: ignore[attr-defined]
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.pre_ln = config.ln_position == "pre"
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        if self.pre_ln:  # GPT-2/3
            x = x + self.attn(self.ln_1(x), mask, cache)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, mask, cache))  # GPT-1
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.context, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
                if config.ln_position == "pre" else nn.Identity(),
            )
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied input/output embeddings
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            if getattr(module, "residual", False) and self.config.scale_residual_init:
                std = std / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def num_params(self, exclude_positions: bool = False) -> int:
        """Parameters, tied weights counted once (the papers' convention includes positions)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if exclude_positions else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention's 12 * L * d * T."""
        t = seq_len or self.config.context
        c = self.config
        return 6 * self.num_params(exclude_positions=True) + 12 * c.n_layer * c.n_embd * t

    def hidden_states(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """The final hidden states [B, T, n_embd].

        attention_mask: [B, T], 1 for real tokens and 0 for padding (left padding in sampling);
            padded keys are never attended to. position_ids: [B, T]; by default 0.. for each row,
            or, with a mask, counted over real tokens only, so a left-padded prompt's first real
            token has position 0. cache: keys and values of earlier positions (see KVCache).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.context:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context of {self.config.context}")
        mask = None
        if cache is not None or attention_mask is not None:
            keys = self._key_mask(attention_mask, cache, B, T, input_ids.device)
            mask = causal_mask(T, past + T, input_ids.device) & keys[:, None, None, :]
            # A padding query would attend to nothing (NaN); let every query see itself. Outputs at
            # padding positions are never used.
            q_pos = torch.arange(past, past + T, device=input_ids.device)[:, None]
            mask = mask | (torch.arange(past + T, device=input_ids.device)[None, :] == q_pos)
        if position_ids is None:
            position_ids = self._positions(attention_mask, cache, B, T, input_ids.device)
        x = self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, mask, cache)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        logits: bool = True,
    ) -> ModelOutput:
        """Logits, hidden states, and with `targets` ([B, T], -100 = ignore) the mean cross-entropy."""
        hidden = self.hidden_states(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        if targets is None and not logits:
            return ModelOutput(None, hidden, None)
        out = self.lm_head(hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(out.float().view(-1, out.size(-1)), targets.reshape(-1), ignore_index=-100)
        return ModelOutput(out, hidden, loss)

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        weight = self.transformer.wte.weight
        return KVCache(self.config, batch, max_len or self.config.context, weight.device, dtype or weight.dtype)

    @staticmethod
    def _key_mask(attention_mask: Tensor | None, cache: KVCache | None, B: int, T: int, device: torch.device) -> Tensor:
        """[B, past + T] True for real tokens, recording new ones in the cache."""
        new = attention_mask.bool() if attention_mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
        if cache is None:
            return new
        cache.mask[:, cache.length : cache.length + T] = new
        return cache.mask[:, : cache.length + T]

    @staticmethod
    def _positions(attention_mask: Tensor | None, cache: KVCache | None, B: int, T: int, device: torch.device) -> Tensor:
        past = cache.length if cache is not None else 0
        if attention_mask is None and (cache is None or bool(cache.mask[:, :past].all())):
            return torch.arange(past, past + T, device=device).expand(B, T)
        seen = cache.mask[:, :past].sum(dim=1, keepdim=True) if cache is not None else torch.zeros(B, 1, device=device, dtype=torch.long)
        real = attention_mask.long() if attention_mask is not None else torch.ones(B, T, dtype=torch.long, device=device)
        return (seen + real.cumsum(dim=1) - 1).clamp(min=0)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices only (linear weights and embeddings), not on biases or gains."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
