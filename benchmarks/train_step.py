"""Train-step throughput: our GPT against `transformers`' GPT-2 (SDPA attention), same shapes, batch and dtype.

One training step is forward (logits and the mean next-token cross-entropy), backward and an AdamW
step (lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices only, `zero_grad(set_to_none=
True)`), with the same AdamW implementation for both (`--adamw`, default fused). Both models have
identical shapes (default: 4 layers x 256 wide, 4 heads, MLP 1024, context 256, vocab 8192, dropout
0, tied embeddings, fp32) and are timed in interleaved rounds after warm-up; a model's figure is its
best round's mean step time, as tokens/s = batch x context / step time.

MFU = flops_per_token x tokens/s / peak, flops_per_token = 6N + 12 L d T (PaLM appendix B, as in
nanoGPT): N counts all parameters except the position embeddings, the tied token embedding / lm_head
matrix once, biases and LayerNorm gains included; 12 L d T is attention's QK^T and AV over the full
T x T square (a causal kernel skips half of it, but the convention counts it). The peak is measured,
not quoted, with the same thread count: on a CPU the best of several fp32 2048^2 products through
`torch.matmul` (MKL) and through oneDNN (which our `Linear` uses); on a GPU bf16 8192^2 products
(and the nominal dense bf16 peak where known). Other processes' CPU use during a model's best round
is printed beside it: on a shared machine a busy round is slower, whatever the code.

Activations (`--activations`, one ratio line each; models are shared between lines):
  default    each library's default: ours exact GELU, `transformers` GPT-2's "gelu_new" (the tanh
             approximation written as Python tensor ops);
  gelu       exact GELU in both (`F.gelu`; HF "gelu");
  gelu_tanh  the tanh approximation in both, through the same kernel (HF "gelu_pytorch_tanh").

    .venv/bin/python benchmarks/train_step.py [--activations default gelu] [--rounds 5] [--steps 4] [--ablate]
    .venv/bin/python benchmarks/train_step.py --device cuda --preset gpt2-small --batch 16   # bf16 autocast
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instructgpt.model import GPT, GPTConfig, preset  # noqa: E402

HF_ACTIVATION = {"default": "gelu_new", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
OURS_ACTIVATION = {"default": "gelu", "gelu": "gelu", "gelu_tanh": "gelu_tanh"}
NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM datasheets


@dataclass
class Contender:
    name: str
    step: Callable[[], None]
    rounds: list[tuple[float, float]] = field(default_factory=list)  # (seconds per step, others' CPU share)

    def best(self) -> tuple[float, float]:
        return min(self.rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", help="a model preset (e.g. gpt2-small); default: 4 x 256, context 256, vocab 8192")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best counts")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--activations", nargs="+", choices=sorted(HF_ACTIVATION), default=["default", "gelu"])
    parser.add_argument("--adamw", choices=["fused", "foreach", "for-loop"], default="fused")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--matmul-precision", choices=["highest", "high", "medium"], default="highest",
                        help="torch.set_float32_matmul_precision for the run (both models); below 'highest' "
                             "fp32 products may use bf16/TF32 internally")
    parser.add_argument("--ablate", action="store_true",
                        help="also time ours with its linear layers on MKL (torch.backends.mkldnn disabled)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc: serve every tensor from the heap and never trim it, so that large "
                             "activations stop page-faulting afresh each step (mallopt; both models)")
    args = parser.parse_args()

    if args.keep_freed_memory:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap-backed allocations
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = preset(args.preset) if args.preset else GPTConfig(vocab_size=8192, context=256, n_layer=4, n_head=4, n_embd=256)
    config = GPTConfig(**{**config.to_dict(), "dropout": 0.0})

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.batch, config.context + 1), generator=generator).to(device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    with torch.device("meta"):
        flops_per_token = GPT(config).flops_per_token()
    contenders: dict[str, Contender] = {}
    for variant in args.activations:
        for side, activation in (("ours", OURS_ACTIVATION[variant]), ("hf", HF_ACTIVATION[variant])):
            name = f"{side}/{activation}"
            if name not in contenders:
                model = ours(config, activation) if side == "ours" else huggingface(config, activation)
                contenders[name] = Contender(name, train_step(model.to(device), side, inputs, targets, args))
                n = sum(p.numel() for p in model.parameters()) - config.context * config.n_embd
                assert 6 * n + 12 * config.n_layer * config.n_embd * config.context == flops_per_token, name
    if args.ablate:
        step = train_step(ours(config, "gelu").to(device), "ours", inputs, targets, args, without_onednn)
        contenders["ours/gelu, MKL linear"] = Contender("ours/gelu, MKL linear", step)

    peaks = matmul_peaks(device)
    print_header(args, config, device, peaks, flops_per_token)
    for contender in contenders.values():
        for _ in range(args.warmup):
            contender.step()
    order = list(contenders.values())
    for round_ in range(args.rounds):
        for contender in order[round_ % len(order):] + order[: round_ % len(order)]:  # rotate who goes first
            synchronize(device)
            before, started = cpu_snapshot(), time.perf_counter()
            for _ in range(args.steps):
                contender.step()
            synchronize(device)
            elapsed = time.perf_counter() - started
            contender.rounds.append((elapsed / args.steps, others_share(before, cpu_snapshot(), elapsed, args.threads)))

    gpu = device.type == "cuda"
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    print(f"{'model':<24} {'tokens/s':>9} {'ms/step':>8} {unit:>8} " + " ".join(f"{'MFU/' + k:>{len(k) + 5}}" for k in peaks)
          + ("" if gpu else "  others' CPU"))
    for contender in contenders.values():
        seconds, others = contender.best()
        achieved = flops_per_token * args.batch * config.context / seconds
        print(f"{contender.name:<24} {args.batch * config.context / seconds:>9,.0f} {seconds * 1e3:>8.1f} "
              f"{achieved / scale:>8.1f} " + " ".join(f"{achieved / p:>{len(k) + 5}.1%}" for k, p in peaks.items())
              + ("" if gpu else f"  {others:>12.0%}"))
    for variant in args.activations:
        mine, theirs = contenders[f"ours/{OURS_ACTIVATION[variant]}"], contenders[f"hf/{HF_ACTIVATION[variant]}"]
        print(f"ratio ours/HF ({variant}: ours {OURS_ACTIVATION[variant]}, HF {HF_ACTIVATION[variant]}): "
              f"{theirs.best()[0] / mine.best()[0]:.2f}x")


def ours(config: GPTConfig, activation: str) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**config.to_dict(), "activation": activation}))


def huggingface(config: GPTConfig, activation: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.context, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=config.ffn, activation_function=activation, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=config.layer_norm_eps, tie_word_embeddings=True,
        use_cache=False, bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel._from_config(hf_config, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa" and model.lm_head.weight is model.transformer.wte.weight
    model.loss_type = "ForCausalLM"  # what it falls back to anyway, with a warning, for "...LMHeadModel"
    return model


def train_step(model: torch.nn.Module, side: str, inputs: torch.Tensor, targets: torch.Tensor,
               args: argparse.Namespace, context: Callable = contextlib.nullcontext) -> Callable[[], None]:
    """One forward + backward + AdamW step; bf16 autocast on a GPU, fp32 on a CPU."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},  # GPT.optimizer_groups' rule
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kind = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[args.adamw]
    optimizer = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, **kind)
    forward = torch.compile(model) if args.compile else model
    cuda = inputs.device.type == "cuda"

    def step() -> None:
        with context(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if side == "ours":
                loss = forward(inputs, targets).loss
            else:
                loss = forward(input_ids=inputs, labels=inputs).loss  # HF shifts the labels itself
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@contextlib.contextmanager
def without_onednn() -> Iterator[None]:
    """Our `Linear` falls back to `F.linear` (MKL on a CPU) while oneDNN is switched off."""
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


def matmul_peaks(device: torch.device, repeats: int = 10) -> dict[str, float]:
    """FLOP/s of the best of `repeats` square products: fp32 2048^2 on a CPU (MKL and oneDNN), bf16 8192^2 on a GPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    probes = {"matmul": lambda: torch.matmul(a, b)}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        probes["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")  # a @ b.T
    peaks = {}
    for name, product in probes.items():
        best = float("inf")
        for i in range(repeats + 3):
            synchronize(device)
            started = time.perf_counter()
            product()
            synchronize(device)
            if i >= 3:  # warm-up
                best = min(best, time.perf_counter() - started)
        peaks[name] = 2 * n**3 / best
    if device.type == "cuda":
        nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
        if nominal:
            peaks["nominal"] = nominal * 1e12
    return peaks


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_snapshot() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies of this process), from /proc; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(ticks) - ticks[3] - ticks[4], int(fields[11]) + int(fields[12])  # minus idle, iowait; utime + stime


def others_share(before: tuple[int, int] | None, after: tuple[int, int] | None, seconds: float, threads: int) -> float:
    """The share of `threads` cores that other processes used between two snapshots."""
    if before is None or after is None:
        return float("nan")
    ticks = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, ticks / os.sysconf("SC_CLK_TCK") / seconds / threads)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def print_header(args: argparse.Namespace, config: GPTConfig, device: torch.device, peaks: dict[str, float],
                 flops_per_token: float) -> None:
    import transformers

    gpu = device.type == "cuda"
    where = torch.cuda.get_device_name() if gpu else f"{cpu_name()}, {args.threads} threads"
    print(f"device: {device.type} ({where}); torch {torch.__version__}, transformers {transformers.__version__}, "
          f"Python {platform.python_version()}")
    print(f"model: {config.n_layer} layers x {config.n_embd} wide, {config.n_head} heads, MLP {config.ffn}, "
          f"context {config.context}, vocab {config.vocab_size}; batch {args.batch} x {config.context} = "
          f"{args.batch * config.context:,} tokens/step; {'bf16 autocast, TF32' if gpu else 'fp32'}; "
          f"AdamW {args.adamw}{'; torch.compile' if args.compile else ''}"
          f"{'; glibc keeps freed memory' if args.keep_freed_memory else ''}"
          f"{'' if args.matmul_precision == 'highest' else f'; fp32 matmul precision {args.matmul_precision}'}")
    print(f"timing: best of {args.rounds} interleaved rounds of {args.steps} steps, after {args.warmup} warm-up steps each")
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    probe = "bf16 8192^2" if gpu else "fp32 2048^2"
    print(f"matmul peaks ({probe}): " + ", ".join(f"{k} {v / scale:.1f} {unit}" for k, v in peaks.items())
          + f"; flops/token = 6N + 12*L*d*T = {flops_per_token / 1e6:.2f} MFLOP")


if __name__ == "__main__":
    main()
