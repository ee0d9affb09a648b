"""Full (unsharded) model and optimizer state of an FSDP-sharded model, as safetensors-ready tensors.

Under FSDP every rank holds a shard of each parameter and of its Adam moments; our checkpoints hold whole tensors
(`m2h.safetensors` is a normal M2H checkpoint the nodes load; `training_state.safetensors` the moments), so a run
can resume on another number of GPUs or without FSDP. PyTorch's `torch.distributed.checkpoint.state_dict` API
gathers and scatters them for FSDP1 and FSDP2 alike: the optimizer state comes keyed by parameter *name*, which we
store as `optf.<state key>.<parameter name>` (the state keys - exp_avg, exp_avg_sq, step - have no dots).

Gathering and setting are collective: every rank calls them. Gathered tensors live on rank 0's CPU only
(`cpu_offload`), so no rank needs room for the whole model on its GPU.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["gather_model_state", "gather_optimizer_state", "set_model_state", "set_optimizer_state"]

PREFIX = "optf."


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: full tensor on the CPU} on rank 0, {} on the others (collective)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def gather_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer
                           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON meta) of the optimizer's full state on rank 0; ({}, {}) on the others (collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not osd:
        return {}, {}
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for name, st in osd["state"].items():
        for k, v in st.items():
            if "." in k:
                raise ValueError(f"optimizer state key {k!r} contains a dot; cannot encode it")
            if isinstance(v, torch.Tensor):
                tensors[f"{PREFIX}{k}.{name}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{k}.{name}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "keyed_by": "name"}


def set_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into the (sharded) model; each rank passes the whole dict (collective)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=True))


def set_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any]) -> None:
    """Inverse of `gather_optimizer_state`; each rank passes the whole state (collective)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state: dict[str, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith(PREFIX):
            k, name = key[len(PREFIX):].split(".", 1)
            state.setdefault(name, {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        k, name = key.split(".", 1)
        state.setdefault(name, {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=_options())
