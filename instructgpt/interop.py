"""Export a pre-LN GPT and its tokenizer to Hugging Face `transformers`' GPT-2 format.

The directory `export_hf` writes loads with `GPT2LMHeadModel.from_pretrained(out_dir)` and
`AutoTokenizer.from_pretrained(out_dir)`, and gives the same logits and token ids as ours:

- `config.json`: a `GPT2Config` (model_type "gpt2");
- `model.safetensors`: our parameters under HF's names. Our model already uses them; HF's GPT-2
  stores its projections as `Conv1D`, whose weight is [in, out], so linear weights are transposed.
  The output layer is tied to the token embedding and not stored (HF ties it back on load);
- `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`: the fast tokenizer, with
  end-of-text as bos/eos and our pad token as pad.

GPT-1's post-LN layout and GPT-3's banded sparse layers have no GPT-2 equivalent and are refused.
HF's GPT-2 always has biases: a model built with bias=False is written with zero biases, which
computes the same function. `transformers` is not imported here: it is only an optional extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from instructgpt.atomic import atomic_dir
from instructgpt.model import GPT, GPTConfig
from instructgpt.tokenizer import SPECIAL, SPECIAL_TOKENS, special_token_ids

# nn.Linear weights are [out, in]; HF GPT-2's Conv1D weights are [in, out].
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Our GELU name -> HF's: "gelu_new" is GPT-2's tanh approximation (same formula as torch's).
_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


def export_hf(model: GPT, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write `model` and `tokenizer` as a Hugging Face GPT-2 directory at `out_dir` (atomically)."""
    config = model.config
    check_exportable(config)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only {config.vocab_size}: "
            "export the tokenizer the model was trained with"
        )
    ids = special_token_ids(tokenizer)
    fields = hf_config(
        config, eos_id=ids[SPECIAL.end_of_text], pad_id=ids[SPECIAL.pad], dtype=model.transformer.wte.weight.dtype
    )
    with atomic_dir(out_dir) as tmp:
        _write_json(tmp / "config.json", fields)
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})  # as HF writes
        _write_tokenizer(tokenizer, tmp, context=config.context)
    return Path(out_dir)


def check_exportable(config: GPTConfig) -> None:
    """Raise ValueError for a layout HF's GPT-2 cannot express."""
    if config.ln_position != "pre":
        raise ValueError(
            "cannot export a post-LN model (GPT-1's layout) to HF GPT-2, which is pre-LN: "
            "only models with ln_position='pre' can be exported"
        )
    if config.sparse_attention:
        raise ValueError(
            "cannot export a model with sparse (locally banded) attention layers: HF GPT-2 attends "
            "densely in every layer, so its outputs would differ"
        )


def hf_config(config: GPTConfig, *, eos_id: int, pad_id: int, dtype: torch.dtype = torch.float32) -> dict:
    """The `GPT2Config` fields for `config`, as config.json holds them."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.ffn,
        "activation_function": _ACTIVATIONS[config.activation],
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": config.init_std,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.attention_dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our parameters under HF GPT-2's names and layouts (contiguous CPU copies)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to transformer.wte.weight; HF ties it back
            continue
        tensor = tensor.detach()
        state[name] = (tensor.t() if name.endswith(_CONV1D) else tensor).contiguous().cpu().clone()
    if not model.config.bias:  # HF's layers always have biases: zeros compute the same function
        for name, tensor in list(state.items()):
            if name.endswith(".weight") and not name.startswith(("transformer.wte.", "transformer.wpe.")):
                state[name.removesuffix("weight") + "bias"] = torch.zeros(tensor.shape[-1], dtype=tensor.dtype)
    return state


def _write_tokenizer(tokenizer: Tokenizer, out: Path, *, context: int) -> None:
    (out / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    named = {
        "bos_token": SPECIAL.end_of_text,
        "eos_token": SPECIAL.end_of_text,
        "unk_token": SPECIAL.end_of_text,  # byte-level BPE never produces an unknown token
        "pad_token": SPECIAL.pad,
    }
    extra = [token for token in SPECIAL_TOKENS if token not in named.values()]
    _write_json(out / "special_tokens_map.json", {**named, "additional_special_tokens": extra})
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **named,
            "additional_special_tokens": extra,
            "model_max_length": context,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        },
    )


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """python -m instructgpt.interop MODEL_DIR OUT_DIR: export a published model (e.g. data/models/base)."""
    import argparse

    from instructgpt.checkpoint import load_model
    from instructgpt.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(prog="python -m instructgpt.interop", description=main.__doc__)
    parser.add_argument("model_dir", type=Path, help="a model directory with model.safetensors, state.json, tokenizer.json")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    model = load_model(args.model_dir)
    tokenizer = load_tokenizer(args.model_dir / "tokenizer.json")
    print(f"exported to {export_hf(model, tokenizer, args.out_dir)}")


if __name__ == "__main__":
    main()
