"""Resumable training state in one safetensors file: model, optimizer, RNG, counters and config.

The optimizer's tensors are flattened into ``optim/<param index>/<name>`` entries and everything else
(param-group settings, counters, the run config) goes into the JSON metadata, so no pickle is involved.
The file is written atomically: a kill leaves either the previous state or the new one. The metadata also
records the CPU linear backend (:mod:`affectmae.models.fast_linear`), which a resumed run takes again.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectmae.checkpoint import load_state_strict, load_weights, save_weights
from affectmae.errors import CheckpointError
from affectmae.models.fast_linear import cpu_gemm_backend


def _rng_tensors() -> dict[str, torch.Tensor]:
    np_state = np.random.get_state()
    return {
        "rng/torch": torch.get_rng_state(),
        "rng/numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
    }


def save_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    counters: dict[str, Any],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write everything needed to continue training exactly where it stopped."""
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
    optim_meta: dict[str, Any] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, pstate in sd["state"].items():
            for name, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{idx}/{name}"] = value
                else:
                    scalars.setdefault(str(idx), {})[name] = value
        optim_meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    tensors.update(_rng_tensors())
    np_state = np.random.get_state()
    meta = {
        "kind": "training_state",
        "counters": counters,
        "config": config,
        "optimizer": optim_meta,
        "rng": {"python": repr(random.getstate()), "numpy_pos": int(np_state[2]),
                "numpy_gauss": [int(np_state[3]), float(np_state[4])]},
        "extra": extra or {},
        "cpu_gemm": cpu_gemm_backend(),  # the fp32 CPU linear backend; a resumed run takes it again
    }
    save_weights(path, tensors, meta)


def load_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    config: dict[str, Any] | None = None,
    compare_keys: tuple[str, ...] = (),
    renamed: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Restore model, optimizer and RNG from ``path``; return the metadata (``counters``, ``extra``...).

    ``compare_keys`` names config entries that must match the saved run (e.g. model size, batch size):
    resuming with a different value raises :class:`CheckpointError` naming each difference. ``renamed``
    (a config class's ``RENAMED``) maps setting names of runs saved before a rename to today's names.
    """
    tensors, meta = load_weights(path)
    if meta.get("kind") != "training_state":
        raise CheckpointError(f"{path}: not a training-state checkpoint (kind={meta.get('kind')!r})")
    if config is not None and compare_keys:
        saved = dict(meta.get("config", {}))
        for old, new in (renamed or {}).items():
            if old in saved and new not in saved:
                saved[new] = saved.pop(old)
        # a key the saved run does not have was added later: the run used that setting's default then
        diffs = [f"{k}: saved {saved[k]!r}, now {config.get(k)!r}" for k in compare_keys
                 if k in saved and saved[k] != config.get(k)]
        if diffs:
            raise CheckpointError(f"{path}: cannot resume with an incompatible config ({'; '.join(diffs)})")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    load_state_strict(model, model_state, path)
    if optimizer is not None and meta.get("optimizer"):
        om = meta["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, idx, name = key.split("/", 2)
                state.setdefault(int(idx), {})[name] = value
        for idx, scal in om.get("scalars", {}).items():
            state.setdefault(int(idx), {}).update(scal)
        try:
            optimizer.load_state_dict({"state": state, "param_groups": om["param_groups"]})
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: optimizer state does not fit this model ({err})") from None
    torch.set_rng_state(tensors["rng/torch"])
    rng = meta["rng"]
    np.random.set_state(("MT19937", tensors["rng/numpy_keys"].numpy().astype(np.uint32), rng["numpy_pos"],
                         rng["numpy_gauss"][0], rng["numpy_gauss"][1]))
    random.setstate(_parse_python_rng(rng["python"]))
    return meta


def _parse_python_rng(text: str) -> tuple:
    import ast

    state = ast.literal_eval(text)
    return (state[0], tuple(state[1]), state[2])


def dumps_config(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)
