"""Full (unsharded) model and optimizer state of an FSDP-sharded model, as safetensors-ready tensors.

Under FSDP every rank holds a shard of each parameter and of its Adam moments; our checkpoints hold whole tensors
(`m2h.safetensors` is a normal M2H checkpoint the nodes load; `training_state.safetensors` the moments), so a run
can resume on another number of GPUs or without FSDP. PyTorch's `torch.distributed.checkpoint.state_dict` API
gathers and scatters them for FSDP1 and FSDP2 alike: the optimizer state comes keyed by parameter *name*, which we
store as `optf.<state key>.<parameter name>` (the state keys - exp_avg, exp_avg_sq, step - have no dots).
`encode_optimizer_state` / `decode_optimizer_state` are that file layout for both keyings (non-FSDP runs store
`opt.<position>.<state key>`); `rekey_optimizer_state` converts between them, so runs resume across the two.

Gathering and setting are collective: every rank calls them. Gathered tensors live on rank 0's CPU only
(`cpu_offload`), so no rank needs room for the whole model on its GPU.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["gather_model_state", "gather_optimizer_state", "set_model_state", "set_optimizer_state",
           "encode_optimizer_state", "decode_optimizer_state", "rekey_optimizer_state"]

PREFIX = "optf."


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: full tensor on the CPU} on rank 0, {} on the others (collective)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def encode_optimizer_state(osd: dict[str, Any], by_name: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch-style optimizer state dict -> (safetensors tensors, JSON meta), in our file layout.

    Keyed by position (`Optimizer.state_dict()`): tensors `opt.<pid>.<key>`, scalars `<pid>.<key>`. Keyed by
    parameter name (the distributed API; names contain dots): tensors `optf.<key>.<name>`, scalars `<key>.<name>`.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for p, st in osd["state"].items():
        for k, v in st.items():
            if "." in k:
                raise ValueError(f"optimizer state key {k!r} contains a dot; cannot encode it")
            if isinstance(v, torch.Tensor):
                tensors[f"{PREFIX}{k}.{p}" if by_name else f"opt.{p}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{k}.{p}" if by_name else f"{p}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    meta: dict[str, Any] = {"param_groups": groups, "scalars": scalars}
    if by_name:
        meta["keyed_by"] = "name"
    return tensors, meta


def decode_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `encode_optimizer_state` (the layout is read from the meta): a torch-style state dict."""
    by_name = meta.get("keyed_by") == "name"
    state: dict[Any, dict[str, Any]] = {}
    for key, v in tensors.items():
        if by_name and key.startswith(PREFIX):
            k, p = key[len(PREFIX):].split(".", 1)
        elif not by_name and key.startswith("opt."):
            _, p, k = key.split(".", 2)
        else:
            continue
        state.setdefault(p if by_name else int(p), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        k, p = key.split(".", 1) if by_name else key.split(".", 1)[::-1]
        state.setdefault(p if by_name else int(p), {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rekey_optimizer_state(osd: dict[str, Any], mapping: dict) -> dict[str, Any]:
    """The same state with its parameter keys (positions <-> names) mapped through `mapping`."""
    return {"state": {mapping[p]: st for p, st in osd["state"].items()},
            "param_groups": [dict(g, params=[mapping[p] for p in g["params"]]) for g in osd["param_groups"]]}


def gather_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer
                           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON meta) of the optimizer's full state on rank 0; ({}, {}) on the others (collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    return encode_optimizer_state(osd, by_name=True) if osd else ({}, {})


def set_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into the (sharded) model; each rank passes the whole dict (collective)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=True))


def set_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any]) -> None:
    """Inverse of `gather_optimizer_state`; each rank passes the whole state (collective)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, decode_optimizer_state(tensors, meta), options=_options())
