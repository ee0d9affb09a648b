"""The pack's ComfyUI runtime (nodes/comfy_nodes.py, nodes/model_patcher.py), run as ComfyUI runs it.

The pack is loaded the way ComfyUI loads a custom node (its __init__.py as a package, `comfy_entrypoint`), and the
nodes' own `execute` runs: the loader builds an M2HModelPatcher, the sampler loads it through
`load_models_gpu`, samples, retries an out-of-memory run with smaller windows, and "Unload models" releases the
weights on a CPU host. In CI the `comfy` modules are the stand-in in tests/comfy_stub/; with M2H_COMFYUI=<ComfyUI
folder> (tests/host/run_runtime_tests.py) the same tests run against the real ComfyUI.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "comfy_stub"
HOST = os.environ.get("M2H_COMFYUI")  # a ComfyUI checkout: run against the real host instead of the stand-in
COMFY_MODULES = ("comfy", "comfy_api", "folder_paths", "latent_preview")
PACK = "comfyui_m2hvideo_runtime_test"
N_FRAMES = 8


def _use_host() -> None:
    """Put the real ComfyUI first on sys.path; on a machine without CUDA run it as `main.py --cpu` would."""
    sys.path.insert(0, HOST)
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """The pack loaded as ComfyUI loads it, its extension's nodes, and ComfyUI's modules it runs on."""
    before = set(sys.modules)
    if HOST:
        _use_host()
    else:
        sys.path.insert(0, str(STUB))
    try:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = pack
        spec.loader.exec_module(pack)
        extension = asyncio.run(pack.comfy_entrypoint())
        asyncio.run(extension.on_load())
        nodes = {cls.SPEC.node_id: cls for cls in asyncio.run(extension.get_node_list())}
        import comfy.model_management as mm
        import comfy.utils
        import folder_paths

        models = tmp_path_factory.mktemp("m2hvideo_models")
        folder_paths.add_model_folder_path("m2hvideo", str(models))
        yield SimpleNamespace(pack=pack, nodes=nodes, mm=mm, utils=comfy.utils, models=models,
                              comfy_nodes=sys.modules[f"{PACK}.nodes.comfy_nodes"],
                              logic=sys.modules[f"{PACK}.nodes.logic"], spec=sys.modules[f"{PACK}.nodes.spec"])
    finally:
        if not HOST:  # leave no stand-in behind for the tests that check the pack imports without ComfyUI
            sys.path.remove(str(STUB))
            for name in set(sys.modules) - before:
                if name.split(".")[0] in COMFY_MODULES + (PACK,):
                    del sys.modules[name]


@pytest.fixture(scope="module")
def checkpoint(comfy):
    """A tiny self-contained M2H checkpoint (VAE and CLIP embedded) in the m2hvideo folder ComfyUI lists."""
    from m2h_core.checkpoint import save_checkpoint
    from m2h_core.config import tiny
    from m2h_core.inference.encoders import FrozenEncoders

    from .fixtures import build_m2h_model

    cfg = tiny()
    path = comfy.models / "m2h_tiny_runtime.safetensors"
    save_checkpoint(build_m2h_model(cfg, seed=0), path, encoders=FrozenEncoders.random(cfg, seed=1))
    return path.name


@pytest.fixture
def progress(comfy):
    """Every ProgressBar update ComfyUI would send to the browser: (value, total)."""
    seen: list[tuple[int, int]] = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    yield seen
    comfy.utils.set_progress_bar_global_hook(None)


def load(comfy, checkpoint):
    loader = comfy.nodes["M2HUNetLoader"]
    assert loader.validate_inputs(checkpoint, "none", "none", "none") is True
    return loader.execute(checkpoint, "none", "none", "none", "fp32").result[0]


def inputs(cfg, seed: int = 0):
    """ComfyUI socket values: IMAGE frames and pose images [N, H, W, 3], a MASK [N, H, W], the identity value."""
    from m2h_core.inference.inputs import IdentityInputs

    g = torch.Generator().manual_seed(seed)
    h, w = cfg.height, cfg.width
    frames = torch.rand(N_FRAMES, h, w, 3, generator=g)
    masks = torch.zeros(N_FRAMES, h, w)
    masks[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    poses = (torch.rand(N_FRAMES, h, w, 3, generator=g) > 0.9).float()
    head = IdentityInputs(torch.rand(3, h, w, generator=g), torch.rand(3, h, w, generator=g),
                          torch.randn(512, generator=g))
    return frames, masks, poses, head


def sample(comfy, patcher, steps: int = 2, context_frames: int = 0, seed: int = 3):
    """M2HSampler.execute with the widgets' values, as a queued prompt calls it."""
    frames, masks, poses, head = inputs(patcher.cfg)
    out = comfy.nodes["M2HSampler"].execute(
        patcher, frames, masks, poses, head, seed=seed, steps=steps, cfg=2.0, scheduler="ddim",
        context_frames=context_frames, context_overlap=2, resize="crop_to_model", pose_strength=1.0,
        identity_strength=1.0, garment_lock=False, keep_background=False, parsing_model="auto")
    return out.result


def test_the_extension_lists_every_node_with_its_saved_id(comfy):
    assert sorted(comfy.nodes) == sorted(n.node_id for n in comfy.spec.NODES)
    for node_id, cls in comfy.nodes.items():
        schema = cls.define_schema()
        assert schema.node_id == node_id and not cls.UNAVAILABLE
        assert [i.id for i in schema.inputs] == [i.id for i in cls.SPEC.inputs]  # widget order of saved workflows


def test_loader_and_sampler_run_through_comfyuis_memory_manager(comfy, checkpoint, progress):
    patcher = load(comfy, checkpoint)
    assert patcher.loads == 1 and patcher.model_size() > 0
    images, latent = sample(comfy, patcher)
    cfg = patcher.cfg
    assert images.shape == (N_FRAMES, cfg.height, cfg.width, 3) and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert latent["samples"].shape == (N_FRAMES, cfg.unet.latent_channels, *cfg.latent_size)
    assert any(m.model is patcher for m in comfy.mm.current_loaded_models)  # ComfyUI knows the model is loaded
    assert progress[-1] == (2, 2)  # the step bar (latent_preview's callback) reached the end
    # the node's images are the sampler's on the same inputs (logic.run_sampler, what m2h's tests exercise)
    frames, masks, poses, head = inputs(cfg)
    video = comfy.logic.prepare_sampler_inputs(frames, masks, poses, cfg.height, cfg.width)
    settings = comfy.logic.sampler_settings(seed=3, steps=2, cfg=2.0, scheduler="ddim", context_frames=0,
                                            context_overlap=2)
    direct, _ = comfy.logic.run_sampler(patcher.pipeline, video, head, settings)
    assert torch.equal(images, direct)
    again, _ = sample(comfy, patcher, seed=4)
    assert (again - images).abs().mean() > 1e-4  # the seed widget reaches the sampler


def test_out_of_memory_is_retried_once_with_smaller_windows(comfy, checkpoint, caplog):
    """A device that fits 4 frames per UNet call: the first run (all 8 frames in one call) runs out of memory, the
    retry (4-frame windows, one CFG pass per call) fits and gives what those settings give when asked for."""
    patcher = load(comfy, checkpoint)
    calls = []

    def budget(module, args):
        calls.append(args[0].shape[0])
        if args[0].shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (a test's budget)")

    hook = patcher.model.m2h.unet.conv_in.register_forward_pre_hook(budget)
    try:
        with caplog.at_level("WARNING", logger="M2HVideo"):
            images, _ = sample(comfy, patcher, context_frames=8)
    finally:
        hook.remove()
    assert calls[0] > 4 and max(calls[1:]) == 4  # the whole video at once, then 4-frame windows
    assert "retrying this run with context_frames=4" in caplog.text
    frames, masks, poses, head = inputs(patcher.cfg)
    video = comfy.logic.prepare_sampler_inputs(frames, masks, poses, patcher.cfg.height, patcher.cfg.width)
    settings = comfy.logic.sampler_settings(seed=3, steps=2, cfg=2.0, scheduler="ddim", context_frames=8,
                                            context_overlap=2)
    smaller, pipe = comfy.logic.low_memory_retry(patcher.pipeline, settings, N_FRAMES)
    assert (smaller.context_frames, smaller.chunk_frames, smaller.batch_cfg) == (4, 4, False)
    assert pipe.encoders.chunk == max(1, patcher.pipeline.encoders.chunk // 2)
    assert torch.equal(images, comfy.logic.run_sampler(pipe, video, head, smaller)[0])


def test_other_errors_are_not_retried(comfy, checkpoint):
    patcher = load(comfy, checkpoint)

    def broken(module, args):
        raise RuntimeError("a broken layer")

    hook = patcher.model.m2h.unet.conv_in.register_forward_pre_hook(broken)
    try:
        with pytest.raises(RuntimeError, match="a broken layer"):
            sample(comfy, patcher, context_frames=8)
    finally:
        hook.remove()


def test_cancel_stops_the_sampler(comfy, checkpoint):
    patcher = load(comfy, checkpoint)
    comfy.mm.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.mm.InterruptProcessingException):
            sample(comfy, patcher, context_frames=4)
    finally:
        comfy.mm.interrupt_current_processing(False)


def test_unloading_releases_the_weights_on_a_cpu_host_and_the_next_run_reads_them_again(comfy, checkpoint):
    patcher = load(comfy, checkpoint)
    if patcher.load_device.type != "cpu":
        pytest.skip("a GPU host offloads the weights to the CPU instead of releasing them")
    first, _ = sample(comfy, patcher)
    comfy.mm.unload_all_models()  # what "Unload models" / POST /free {"unload_models": true} runs
    assert patcher.released and all(p.is_meta for p in patcher.model.parameters())
    assert not any(m.model is patcher for m in comfy.mm.current_loaded_models)
    second, _ = sample(comfy, patcher)
    assert patcher.loads == 2 and not patcher.released
    assert torch.equal(first, second)  # the same weights, read again from the same file
    clone = patcher.clone()
    assert (clone.loads, clone.cfg, clone.description) == (patcher.loads, patcher.cfg, patcher.description)
