"""Training state on disk: checkpoint folders, optimizer moments, RNG states, GradScaler (safetensors + JSON).

`<output_dir>/checkpoints/step_XXXXXXXX/` holds `m2h.safetensors` (a normal M2H checkpoint, LoRA merged),
`training_state.safetensors` (optimizer moments, per-rank RNG states, LoRA factors when used) and
`training_state.json` (step, data position, optimizer hyper-parameters, lr scheduler, config). A folder is
written under a temporary name and renamed when complete, so a crash never leaves a half checkpoint; only the
newest `keep_last` are kept. No pickle anywhere. Resuming restores model, optimizer, lr schedule, RNG states and
data position, so a resumed run follows the same trajectory as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from ..checkpoint import atomic_save_file, save_checkpoint
from ..config import M2HConfig
from .components import merged_state_dict
from .sharded_state import (decode_optimizer_state, encode_optimizer_state, gather_model_state, gather_optimizer_state,
                            rekey_optimizer_state, set_model_state, set_optimizer_state)



class TrainingRun(Protocol):
    """What a checkpoint saves and restores of a run (`trainer.Trainer` is one); a protocol, so this module does
    not import the trainer that imports it."""

    tc: Any  # TrainConfig
    cfg: M2HConfig
    out: Path
    accelerator: Any
    ddp_model: torch.nn.Module
    optimizer: Any
    lr_scheduler: Any
    generator: torch.Generator
    sharded: bool
    param_names: list[str]
    step: int
    position: int

    def log(self, text: str) -> None: ...

STATE_VERSION = 2  # 2: RNG states per rank, GradScaler state (version 1 still loads)
CKPT_PREFIX = "step_"


class _StateView:
    """What `save_checkpoint` needs (cfg, state_dict) for a merged state dict."""

    def __init__(self, cfg: M2HConfig, sd: dict[str, torch.Tensor]):
        self.cfg, self._sd = cfg, sd

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._sd


# ================================================================================================ state files


def _rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch CPU, its current CUDA device, numpy, python and the trainer's noise
    generator. Keys are relative ("torch", "generator", ...); the trainer prefixes them with the rank."""
    tensors = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["torch"])
    generator.set_state(tensors["generator"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["numpy.keys"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _reseed_rng(seed: int, rank: int, step: int, generator: torch.Generator) -> None:
    """Fresh, distinct per-rank RNG states derived from (seed, rank, step) (resuming with another world size)."""
    s64 = int(np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)[0])
    torch.manual_seed(s64)  # also every CUDA device of this process
    generator.manual_seed(s64)
    np.random.seed(s64 % 2**32)
    random.seed(s64)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return encode_optimizer_state(opt.state_dict(), by_name=False)


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                           ) -> None:
    opt.load_state_dict(decode_optimizer_state(tensors, meta))


def _optimizer_state_keyed(tensors: dict[str, torch.Tensor], meta: dict[str, Any], names: list[str],
                           by_name: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Saved optimizer state -> keyed by parameter name (`sharded_state`) or by position (`optimizer_from_tensors`).

    Positions index `names` (the trainable parameters in optimizer order, the same in every run of a config)."""
    if (meta.get("keyed_by") == "name") == by_name:
        return tensors, meta
    osd = decode_optimizer_state(tensors, meta)
    mapping = dict(enumerate(names)) if by_name else {n: i for i, n in enumerate(names)}
    return encode_optimizer_state(rekey_optimizer_state(osd, mapping), by_name)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            continue
    return out


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX)
            and (p / "training_state.json").is_file() and (p / "m2h.safetensors").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(CKPT_PREFIX):]))




def clean_stale_tmp(trainer: TrainingRun) -> None:
    """Remove `.tmp-step_*` folders a crash during save() left behind (main process only)."""
    root = trainer.out / "checkpoints"
    if trainer.accelerator.is_main_process and root.is_dir():
        for stale in root.glob(f".tmp-{CKPT_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

def gather_rng_states(trainer: TrainingRun) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Every rank's RNG states, in rank order (collective: all ranks call it)."""
    from accelerate.utils import gather_object

    return list(gather_object([_rng_state(trainer.generator)]))

def save_training_checkpoint(trainer: TrainingRun) -> Path:
    """Write checkpoints/step_XXXXXXXX atomically (temp folder + rename) and prune old ones."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    root = trainer.out / "checkpoints"
    final = root / f"{CKPT_PREFIX}{trainer.step:08d}"
    unwrapped = acc.unwrap_model(trainer.ddp_model)
    inner_opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    full_sd = None
    sharded_opt: tuple[dict[str, torch.Tensor], dict[str, Any]] = ({}, {})
    if trainer.sharded:  # collective: every rank takes part, rank 0 receives whole tensors (sharded_state.py)
        full_sd = gather_model_state(trainer.ddp_model)
        sharded_opt = gather_optimizer_state(trainer.ddp_model, inner_opt)
    elif acc.distributed_type.value == "DEEPSPEED":
        full_sd = acc.get_state_dict(trainer.ddp_model)
    rng_states = gather_rng_states(trainer)
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(trainer)
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        tmp.mkdir()
        sd = merged_state_dict(unwrapped) if full_sd is None else full_sd
        meta = {"step": trainer.step, "data_position": trainer.position, "train_config": trainer.tc.to_dict()}
        save_checkpoint(_StateView(trainer.cfg, {k: v.float() for k, v in sd.items()}), tmp / "m2h.safetensors",
                        extra=meta)
        tensors: dict[str, torch.Tensor] = {}
        rng_meta = []
        for rank, (rt, rm) in enumerate(rng_states):  # one set per rank: ranks must not share noise
            tensors.update({f"rng.{rank}.{k}": v.detach().cpu().clone() for k, v in rt.items()})
            rng_meta.append(rm)
        opt_meta: dict[str, Any] = {}
        if trainer.sharded:
            ot, opt_meta = sharded_opt
            tensors.update(ot)
        elif acc.distributed_type.value in ("NO", "MULTI_GPU", "MULTI_CPU", "MULTI_NPU", "MULTI_XPU"):
            ot, opt_meta = optimizer_to_tensors(inner_opt)
            tensors.update(ot)
        if trainer.tc.lora_rank > 0:
            for name, p in unwrapped.named_parameters():
                if p.requires_grad:
                    tensors[f"param.{name}"] = p.detach().float().cpu().contiguous()
        atomic_save_file(tensors, tmp / "training_state.safetensors", {"format": "m2hvideo-train-state"})
        state = {"version": STATE_VERSION, "step": trainer.step, "data_position": trainer.position,
                 "max_steps": trainer.tc.max_steps, "optimizer": opt_meta, "optimizer_saved": bool(opt_meta),
                 "lr_scheduler": _jsonable(trainer.lr_scheduler.state_dict()), "rng": rng_meta,
                 "param_names": trainer.param_names, "train_config": trainer.tc.to_dict(),
                 "world_size": acc.num_processes, "grad_scaler": scaler_state(trainer)}
        (tmp / "training_state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(trainer.out)[:-trainer.tc.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final

def load_training_checkpoint(trainer: TrainingRun, ckpt_dir: str | os.PathLike) -> None:
    """Restore model, optimizer, lr schedule, RNG states, step and data position from a checkpoint folder."""
    d = Path(ckpt_dir)
    state_path = d / "training_state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{d} is not a training checkpoint (no training_state.json)")
    state = json.loads(state_path.read_text())
    if state.get("version") not in (1, STATE_VERSION):
        raise ValueError(f"{d}: training state version {state.get('version')}, expected {STATE_VERSION}")
    if state["param_names"] != trainer.param_names:
        raise ValueError(f"{d} was written for a different set of trainable parameters (other LoRA rank or "
                         "ablation switches?); resume with the same config")
    tensors = load_file(str(d / "training_state.safetensors"))
    unwrapped = trainer.accelerator.unwrap_model(trainer.ddp_model)
    if trainer.tc.lora_rank > 0:
        params = dict(unwrapped.named_parameters())
        with torch.no_grad():
            for name in trainer.param_names:
                params[name].copy_(tensors[f"param.{name}"])
    else:
        sd = load_file(str(d / "m2h.safetensors"))  # on the CPU; load_state_dict copies to the device
        if trainer.sharded:
            set_model_state(trainer.ddp_model, sd)
        else:
            unwrapped.load_state_dict(sd)
    if state.get("optimizer_saved"):
        opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        # saved by an FSDP run (keyed by parameter name) or not (keyed by position): convert to what this run
        # uses, so a run can resume with or without FSDP
        ot, om = _optimizer_state_keyed(tensors, state["optimizer"], trainer.param_names,
                                        by_name=trainer.sharded)
        if trainer.sharded:
            set_optimizer_state(trainer.ddp_model, opt, ot, om)
        else:
            # CPU tensors: torch moves the moments to their parameter's device and keeps `step` on the CPU
            # (a `step` on the GPU makes Adam sync with .item() for every parameter at every step)
            optimizer_from_tensors(opt, ot, om)
    else:
        trainer.log("note: this checkpoint has no optimizer moments (sharded run); Adam restarts its moments")
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    load_scaler_state(trainer, state.get("grad_scaler"))
    trainer.step = int(state["step"])
    trainer.position = int(state["data_position"])
    load_rng(trainer, tensors, state)

def scaler_state(trainer: TrainingRun) -> dict[str, Any] | None:
    scaler = getattr(trainer.accelerator, "scaler", None)
    if scaler is None:
        return None
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in scaler.state_dict().items()}

def load_scaler_state(trainer: TrainingRun, sd: dict[str, Any] | None) -> None:
    scaler = getattr(trainer.accelerator, "scaler", None)
    if scaler is not None and sd:
        scaler.load_state_dict(sd)
    elif scaler is not None:
        trainer.log("note: this checkpoint has no GradScaler state; the fp16 loss scale restarts")

def load_rng(trainer: TrainingRun, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    rank = trainer.accelerator.process_index
    prefix = f"rng.{rank}."
    if prefix + "generator" in tensors:
        _set_rng_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                       state["rng"][rank], trainer.generator)
    elif "rng.generator" in tensors and rank == 0 and trainer.accelerator.num_processes == 1:  # version 1
        legacy = {"torch": tensors["rng.torch"], "generator": tensors["rng.generator"],
                  "numpy.keys": tensors["rng.numpy.keys"]}
        _set_rng_state(legacy, state["rng"], trainer.generator)
    else:  # more ranks than the run that saved it (or a version-1 multi-process state)
        _reseed_rng(trainer.tc.seed, rank, trainer.step, trainer.generator)
        trainer.log(f"note: no saved RNG state for rank {rank}; re-seeded from (seed, rank, step)")
