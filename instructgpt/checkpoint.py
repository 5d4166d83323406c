"""Checkpoints: a directory a run resumes from exactly, and that a person can read without torch.

    <checkpoint_dir>/step_000001000/
        model.safetensors       the weights; a tied tensor is stored once, its aliases in the metadata
        optimizer.safetensors   every tensor of the optimizer state, keyed "<parameter name>/<key>"
        state.json              model config, step, data position, RNG states, the optimizer's
                                hyperparameters (param groups by parameter name), caller's extras

Keying the optimizer state by parameter name (not by position) keeps it readable and makes a
mismatch an error that names the parameter. A directory is written under a temporary name and
renamed into place (`atomic.atomic_dir`), so a crash, even SIGKILL, leaves either the complete
new checkpoint or none; names starting with "." are never read. Nothing is unpickled: tensors come
from safetensors, everything else from JSON, RNG states as base64 of their raw bytes.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from instructgpt import atomic
from instructgpt.errors import DataError
from instructgpt.model import GPT, GPTConfig

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(DataError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


@dataclass(frozen=True)
class Checkpoint:
    """What `load_checkpoint` restored besides the tensors: the JSON part of a checkpoint."""

    path: Path
    step: int
    data: dict[str, Any] = field(default_factory=dict)  # the data position (e.g. {"step": 1000})
    extra: dict[str, Any] = field(default_factory=dict)  # the caller's metadata (tokenizer sha256, metrics...)
    config: dict[str, Any] | None = None  # the model's config, if it has one


def step_dir(checkpoint_dir: str | Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"step_{step:09d}"


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int,
    data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint directory `path` atomically (replacing one already there); return it.

    The RNG states of python, numpy and torch (CPU and every CUDA device) are recorded too.
    `data` and `extra` must be JSON-serialisable.
    """
    path = Path(path)
    names = _parameter_names(model)
    weights, aliases = _dedupe_tied(model.state_dict())
    state = {
        "format": 1,
        "step": step,
        "config": _model_config(model),
        "data": data or {},
        "extra": extra or {},
        "rng": rng_state(),
        "tied": aliases,
    }
    with atomic.atomic_dir(path) as tmp:
        save_file(weights, tmp / MODEL_FILE, metadata={"format": "pt"})
        if optimizer is not None:
            tensors, state["optimizer"] = _optimizer_to_named(optimizer, names)
            save_file(tensors, tmp / OPTIMIZER_FILE, metadata={"format": "pt"})
        write_state(tmp, state)
        for file in tmp.iterdir():
            atomic._fsync(file)
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
    config_changes: Iterable[str] = (),
) -> Checkpoint:
    """Load weights (and optimizer state, and RNG states) from `path` into `model` (and `optimizer`).

    Tensors land on the device and dtype of the model's parameters. A model whose config differs
    from the checkpoint's (in a field not named in `config_changes`, e.g. "dropout" for fine-tuning),
    or whose parameters do not match by name and shape, is refused.
    """
    path = Path(path)
    state = read_state(path)
    config = _model_config(model)
    saved = state.get("config")
    if saved is not None and config is not None:
        config = json.loads(json.dumps(config))  # as JSON holds it: tuples are lists
        keys = sorted((set(config) | set(saved)) - set(config_changes))
        diff = ", ".join(f"{k} {saved.get(k)!r} (model: {config.get(k)!r})" for k in keys if config.get(k) != saved.get(k))
        if diff:
            raise CheckpointError(
                f"written for a different model: {diff}; point the run at another checkpoint directory or restore the config",
                file=path / STATE_FILE,
            )
    weights = _load_tensors(path / MODEL_FILE)
    for alias, target in state.get("tied", {}).items():
        weights[alias] = weights[target]
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"does not fit the model: {err}", file=path / MODEL_FILE) from err
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError("holds no optimizer state", file=path / STATE_FILE)
        tensors = _load_tensors(path / OPTIMIZER_FILE)
        optimizer.load_state_dict(_optimizer_from_named(optimizer, _parameter_names(model), tensors, state["optimizer"], path))
    if restore_rng:
        set_rng_state(state["rng"])
    return Checkpoint(path, int(state["step"]), state.get("data", {}), state.get("extra", {}), state.get("config"))


def write_state(path: str | Path, state: dict[str, Any]) -> None:
    """state.json into the directory `path` (one being written atomically): indented, keys sorted,
    so that the same state is the same bytes, which DVC and the run keys hash."""
    (Path(path) / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_state(path: str | Path) -> dict[str, Any]:
    """state.json of a checkpoint: readable without loading any tensor."""
    file = Path(path) / STATE_FILE
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint state: {err}", file=file) from err


def load_model(path: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> GPT:
    """The GPT a checkpoint holds, rebuilt from its config (for SFT, reward modelling, evaluation).

    `overrides` change fields that leave the weights' shapes alone, e.g. `dropout=0.2` for SFT.
    """
    model = GPT(model_config(path, **overrides))
    load_checkpoint(path, model, restore_rng=False, config_changes=overrides)
    return model.to(device)


def model_config(path: str | Path, **overrides: Any) -> GPTConfig:
    """The GPT config a checkpoint records, with `overrides` applied (every model built on a GPT body)."""
    path = Path(path)
    state = read_state(path)
    if state.get("config") is None:
        raise CheckpointError("records no model config, so the GPT cannot be rebuilt", file=path / STATE_FILE)
    try:
        return GPTConfig(**{**state["config"], **overrides})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the model config is not a GPT config: {err}", file=path / STATE_FILE) from err


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `checkpoint_dir` (step_<N> with a state.json), oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def prune_checkpoints(checkpoint_dir: str | Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints (0 keeps all); remove leftovers of saves a crash cut short."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return
    for leftover in root.glob(".step_*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------
# RNG states, JSON-safe


def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy and torch (CPU and CUDA devices), as JSON."""
    version, words, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": _b64(np.asarray(words, np.uint32)), "gauss_next": gauss},
        "numpy": {"kind": kind, "key": _b64(key), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": _b64(torch.get_rng_state().numpy()),
        "cuda": [_b64(s.numpy()) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    words = tuple(int(w) for w in _unb64(py["state"], np.uint32))
    random.setstate((py["version"], words, py["gauss_next"]))
    key = _unb64(npy["key"], np.uint32)
    np.random.set_state((npy["kind"], key, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(torch.from_numpy(_unb64(state["torch"], np.uint8)))
    if torch.cuda.is_available() and state["cuda"]:
        cuda = [torch.from_numpy(_unb64(s, np.uint8)) for s in state["cuda"]]
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _unb64(text: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


# ---------------------------------------------------------------------------------------------
# weights and optimizer state


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else None


def _dedupe_tied(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory: a tied tensor is kept under its first name and
    its other names are mapped to it; distinct views of one storage are copied apart."""
    weights: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, tensor in state_dict.items():
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        key = (*storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensor = tensor.detach()
        weights[name] = (tensor.clone() if storage in storages else tensor).contiguous().cpu()
        storages.add(storage)
    return weights, aliases


def _parameter_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name (a tied parameter has one entry)."""
    return {id(p): name for name, p in model.named_parameters()}


def _optimizer_to_named(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors keyed "<param>/<key>", and the JSON rest: param groups by name, non-tensor state."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    groups = []
    for group in optimizer.param_groups:
        params = [names[id(p)] for p in group["params"]]
        groups.append({k: _json_value(v) for k, v in group.items() if k != "params"} | {"params": params})
        for p, name in zip(group["params"], params):
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, Tensor):
                    tensors[f"{name}/{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars.setdefault(name, {})[key] = _json_value(value)
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_named(
    optimizer: torch.optim.Optimizer,
    names: dict[int, str],
    tensors: dict[str, Tensor],
    saved: dict[str, Any],
    path: Path,
) -> dict[str, Any]:
    """The `optimizer.state_dict()`-shaped dict (parameters by position) for the current optimizer."""
    current = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    saved_groups = saved["param_groups"]
    if [g["params"] for g in saved_groups] != current:
        raise CheckpointError(
            "the optimizer's parameter groups differ from the checkpoint's (different model or grouping)",
            file=path / STATE_FILE,
            field="optimizer.param_groups",
        )
    per_param: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name, _, item = key.rpartition("/")
        per_param.setdefault(name, {})[item] = tensor
    for name, items in saved.get("scalars", {}).items():
        per_param.setdefault(name, {}).update(items)
    state, groups, position = {}, [], 0
    for group, saved_group in zip(current, saved_groups):
        restored = {k: tuple(v) if isinstance(v, list) else v for k, v in saved_group.items() if k != "params"}
        groups.append(restored | {"params": list(range(position, position + len(group)))})
        for name in group:
            if name in per_param:
                state[position] = per_param.pop(name)
            position += 1
    if per_param:
        raise CheckpointError(f"optimizer state for unknown parameters {sorted(per_param)[:3]}", file=path / OPTIMIZER_FILE)
    return {"state": state, "param_groups": groups}


def _json_value(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def _load_tensors(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(file)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"not a readable safetensors file: {err}", file=file) from err
