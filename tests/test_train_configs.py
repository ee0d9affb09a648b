"""The shipped training configs: sd15.yaml has Sec. IV-B's settings (with beta = 0.005, Table I's row) on our SD-1.5 +
AnimateDiff backbone, and every Table III / Table IV config sets exactly its row's switches and nothing else differs
from sd15.yaml."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from m2h_core.training.config import TrainConfig, load_train_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "train" / "configs"
NEED = {"data": "cache", "base": "sd15.safetensors"}  # what a real run adds on the command line

# the paper's tables, typed in from the PDF: (H, A, L_mir) and (alpha, beta)
TABLE3_ROWS = [(False, False, False), (True, False, False), (False, True, False), (False, False, True),
               (True, True, False), (True, False, True), (False, True, True), (True, True, True)]
TABLE4_ROWS = [(0, 0.005), (0.005, 0.005), (0.05, 0.005), (0.5, 0.005), (0.05, 0), (0.05, 0.0005), (0.05, 0.05),
               (0.05, 0.5)]
SWITCHES = ("use_head_encoder", "adapter_enabled", "adapter_normalize", "mirror", "alpha", "beta", "output_dir")


def _differences(tc: TrainConfig, ref: TrainConfig) -> dict:
    a, b = tc.to_dict(), ref.to_dict()
    return {k: a[k] for k in a if a[k] != b[k]}


def test_sd15_has_the_papers_training_settings():
    tc = load_train_config(CONFIGS / "sd15.yaml", NEED)
    assert (tc.preset, tc.height, tc.width, tc.num_frames, tc.frame_stride) == ("sd15", 512, 256, 8, 4)
    assert (tc.lr, tc.adam_beta1, tc.adam_beta2, tc.batch_size, tc.max_steps) == (5e-5, 0.0, 0.99, 4, 27500)
    assert (tc.alpha, tc.beta, tc.progressive, tc.half_res_fraction) == (0.05, 0.005, True, 0.5)
    assert tc.use_head_encoder and tc.adapter_enabled and tc.adapter_normalize and tc.mirror


@pytest.mark.parametrize("row", range(8))
def test_table3_config_has_its_rows_switches(row):
    h, a, m = TABLE3_ROWS[row]
    name = f"H{int(h)}_A{int(a)}_M{int(m)}"
    tc = load_train_config(CONFIGS / "table3" / f"{name}.yaml", NEED)
    ref = load_train_config(CONFIGS / "sd15.yaml", NEED)
    assert (tc.use_head_encoder, tc.adapter_enabled, tc.mirror) == (h, a, m)
    assert tc.adapter_normalize and (tc.alpha, tc.beta) == (0.05, 0.005)
    assert set(_differences(tc, ref)) <= set(SWITCHES) and tc.output_dir.endswith(name)


@pytest.mark.parametrize("row", range(8))
def test_table4_config_has_its_rows_weights(row):
    al, be = TABLE4_ROWS[row]
    name = f"alpha{al:g}_beta{be:g}"
    tc = load_train_config(CONFIGS / "table4" / f"{name}.yaml", NEED)
    ref = load_train_config(CONFIGS / "sd15.yaml", NEED)
    assert (tc.alpha, tc.beta) == (al, be)
    assert tc.use_head_encoder and tc.adapter_enabled and tc.adapter_normalize and tc.mirror
    assert set(_differences(tc, ref)) <= set(SWITCHES) and tc.output_dir.endswith(name)


def test_every_shipped_config_loads_and_the_cli_grids_match_them():
    files = sorted(CONFIGS.glob("table3/*.yaml")) + sorted(CONFIGS.glob("table4/*.yaml"))
    assert len(files) == 16
    sys.path.insert(0, str(ROOT / "train"))
    import train as train_cli  # noqa: PLC0415

    assert [(o["use_head_encoder"], o["adapter_enabled"], o["mirror"]) for o in train_cli.TABLE3] \
        == sorted(TABLE3_ROWS)
    assert train_cli.TABLE4 == TABLE4_ROWS
    load_train_config(CONFIGS / "tiny.yaml")


def test_extends_errors_are_clear(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nlr: 1.0\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loop"):
        load_train_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nope.yaml\n")
    with pytest.raises(FileNotFoundError, match="extends .*nope.yaml"):
        load_train_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: e.yaml\nlr: 0.5\n")
    (tmp_path / "e.yaml").write_text("random_init: true\nsynthetic_clips: 2\nlr: 0.1\nbatch_size: 3\n")
    tc = load_train_config(tmp_path / "d.yaml", {"batch_size": 2})
    assert (tc.lr, tc.batch_size, tc.synthetic_clips) == (0.5, 2, 2)
    with pytest.raises(ValueError, match="mirror_reduction"):
        load_train_config(tmp_path / "d.yaml", {"mirror_reduction": "sum"})


def test_identity_input_is_a_config_key(tmp_path):
    """Head-only x_id (ours) vs the paper's whole frame: sd15.yaml says head; --set identity_input=full switches it,
    and a checkpoint trained the other way is refused rather than silently retrained."""
    from m2h_core.checkpoint import save_checkpoint
    from m2h_core.config import tiny
    from m2h_core.models.m2h import M2HModel
    from m2h_core.training.config import checkpoint_model_config

    assert load_train_config(CONFIGS / "sd15.yaml", NEED).model_config().identity_input == "head"
    full = load_train_config(CONFIGS / "sd15.yaml", {**NEED, "identity_input": "full"})
    assert full.model_config().identity_input == "full"
    with pytest.raises(ValueError, match="identity_input"):
        load_train_config(CONFIGS / "sd15.yaml", {**NEED, "identity_input": "face"})
    ckpt = tmp_path / "m2h.safetensors"
    save_checkpoint(M2HModel(tiny()), ckpt)  # the tiny preset: head
    tc = TrainConfig.from_dict({"preset": "tiny", "init_checkpoint": str(ckpt), "synthetic_clips": 1,
                                "identity_input": "full"})
    with pytest.raises(ValueError, match="identity_input: full"):
        checkpoint_model_config(tc)
