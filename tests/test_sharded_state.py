"""FSDP checkpoints: real FSDP2 (`fully_shard`) on two CPU ranks (gloo), gathered to whole tensors and back.

accelerate only enables FSDP on GPUs, so the Trainer's FSDP path cannot run here; what it relies on does:
`sharded_state` gathers and scatters a sharded tiny M2H model and its Adam moments, and the position <-> name
conversion lets a sharded run and a single-process run resume each other's checkpoints exactly.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from m2h_core.config import tiny
from m2h_core.models.m2h import M2HModel
from m2h_core.training.state import _optimizer_state_keyed, optimizer_from_tensors, optimizer_to_tensors
from tests.fixtures import random_inputs

# Weights compare to 1/20 of one Adam step (lr 1e-3): a gradient entry below Adam's eps (some are ~1e-10 here) is
# rounding, and its update (~1e-5) follows the all-reduce's summation order; a restore that mixes up tensors moves
# weights by a whole step or more.
WEIGHT_ATOL = 5e-5

dist_ok = torch.distributed.is_available() and torch.distributed.is_gloo_available()


def _loss(model: M2HModel, step: int) -> torch.Tensor:
    cfg = model.cfg
    inputs = random_inputs(cfg, batch=1, frames=2, seed=step)
    g = torch.Generator().manual_seed(100 + step)
    h, w = cfg.latent_size
    z = torch.randn(1, 2, cfg.unet.latent_channels, h, w, generator=g)
    return (model(z, torch.tensor([500]), inputs) - z).pow(2).mean()


def _model(seed: int) -> tuple[M2HModel, torch.optim.Adam]:
    torch.manual_seed(seed)
    m = M2HModel(tiny())
    return m, torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.0, 0.99))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from m2h_core.training.sharded_state import (gather_model_state, gather_optimizer_state, set_model_state,
                                        set_optimizer_state)

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    try:
        def sharded(seed):
            m, _ = _model(seed)
            for blk in m.unet.down_blocks:
                fully_shard(blk)
            fully_shard(m)
            return m, torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.0, 0.99))

        def save(m, opt, name):
            sd = gather_model_state(m)
            ot, om = gather_optimizer_state(m, opt)
            if rank == 0:
                save_file({k: v.contiguous() for k, v in sd.items()}, f"{out}/{name}_model.safetensors")
                save_file(ot, f"{out}/{name}_opt.safetensors")
                Path(f"{out}/{name}_opt.json").write_text(json.dumps(om))
            torch.distributed.barrier()

        m, opt = sharded(0)  # every rank sees the same batch: the averaged gradient is the single-process one
        _loss(m, 1).backward()
        opt.step()
        save(m, opt, "step1")
        # a fresh sharded model with other weights, restored from the whole-tensor files, takes step 2
        m2, opt2 = sharded(7)
        set_model_state(m2, load_file(f"{out}/step1_model.safetensors"))
        set_optimizer_state(m2, opt2, load_file(f"{out}/step1_opt.safetensors"),
                            json.loads(Path(f"{out}/step1_opt.json").read_text()))
        opt2.zero_grad()
        _loss(m2, 2).backward()
        opt2.step()
        save(m2, opt2, "step2")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist_ok, reason="torch.distributed with gloo is not available")
def test_fsdp2_checkpoint_roundtrip_matches_a_single_process_run(tmp_path):
    out = str(tmp_path)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)

    # the same two steps in one process, no FSDP
    ref, ref_opt = _model(0)
    _loss(ref, 1).backward()
    ref_opt.step()
    names = [n for n, _ in ref.named_parameters()]

    def check(name):
        got = load_file(f"{out}/{name}_model.safetensors")
        want = ref.state_dict()
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=WEIGHT_ATOL, msg=k)
        # moments saved by name under FSDP == the single-process optimizer's, after the name -> position conversion
        ot, om = _optimizer_state_keyed(load_file(f"{out}/{name}_opt.safetensors"),
                                        json.loads(Path(f"{out}/{name}_opt.json").read_text()), names,
                                        by_name=False)
        want_t, want_m = optimizer_to_tensors(ref_opt)
        assert set(ot) == set(want_t) and len(ot) == 3 * len(names)
        for k in want_t:
            torch.testing.assert_close(ot[k].float(), want_t[k].float(), rtol=1e-5, atol=1e-7, msg=k)
        assert om["param_groups"][0]["params"] == want_m["param_groups"][0]["params"]
        return ot, om

    ot, om = check("step1")
    # the FSDP-saved state also resumes a single-process run, which then matches the sharded step 2
    resumed, r_opt = _model(7)
    resumed.load_state_dict(load_file(f"{out}/step1_model.safetensors"))
    optimizer_from_tensors(r_opt, ot, om)
    ref_opt.zero_grad()
    _loss(ref, 2).backward()
    ref_opt.step()
    _loss(resumed, 2).backward()
    r_opt.step()
    check("step2")
    for (k, a), b in zip(resumed.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=WEIGHT_ATOL, msg=k)


def test_optimizer_state_position_name_conversion_roundtrips():
    m, opt = _model(0)
    _loss(m, 1).backward()
    opt.step()
    names = [n for n, _ in m.named_parameters()]
    t, meta = optimizer_to_tensors(opt)
    nt, nm = _optimizer_state_keyed(t, meta, names, by_name=True)
    assert nm["keyed_by"] == "name" and all(k.startswith("optf.") for k in nt)
    assert f"optf.exp_avg.{names[3]}" in nt and torch.equal(nt[f"optf.exp_avg.{names[3]}"], t["opt.3.exp_avg"])
    back_t, back_m = _optimizer_state_keyed(nt, nm, names, by_name=False)
    assert set(back_t) == set(t) and all(torch.equal(back_t[k], t[k]) for k in t)
    assert back_m["param_groups"] == meta["param_groups"]


def test_example_accelerate_fsdp_config_names_classes_of_the_model():
    """The shipped accelerate FSDP config parses, and the classes it wraps exist in the model (accelerate would
    otherwise fail at prepare time on the user's GPUs, or wrap nothing)."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).resolve().parents[1] / "train" / "configs" / "accelerate_fsdp.yaml"
    c = load_config_from_file(str(path))
    assert c.distributed_type.value == "FSDP"
    wrapped = set(c.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    classes = {type(m).__name__ for m in M2HModel(tiny()).modules()}
    assert wrapped and wrapped <= classes
