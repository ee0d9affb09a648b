"""IP-Adapter image projections (models/faceid.py) vs diffusers' own, on tiny random weights in the files' key
layout."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from m2h_core.models.faceid import build_image_projection, detect_variant
from tests.zero_shot_fixtures import tiny_image_proj


def _diffusers_projection(sd):
    return UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(None, dict(sd), low_cpu_mem_usage=False)


@pytest.mark.parametrize("variant", ["faceid", "faceid_plus", "faceid_plusv2", "plus_face"])
def test_projection_equals_diffusers(variant):
    sd = tiny_image_proj(variant)
    ours = build_image_projection(sd, variant)
    ref = _diffusers_projection(sd).eval()
    arc = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    clip = torch.randn(2, 9, 48)
    with torch.no_grad():
        got = ours(arc, clip)
        if variant == "faceid":
            want = ref(arc)
        elif variant.startswith("faceid_plus"):
            ref.clip_embeds = clip[:, None]
            ref.shortcut = variant == "faceid_plusv2"
            want = ref(arc)
        else:
            want = ref(clip)
    assert got.shape == (2, 16 if variant == "plus_face" else 4, 64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_key_grammar_is_the_files():
    """Strict loading: a file's exact keys load, a renamed one is refused; variants are told apart by keys."""
    for variant in ("faceid", "faceid_plusv2", "plus_face"):
        sd = tiny_image_proj(variant)
        assert set(build_image_projection(sd, variant).state_dict()) == set(sd)
    sd = tiny_image_proj("faceid")
    assert {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"} == set(sd)
    assert detect_variant(sd) == "faceid"
    assert detect_variant(tiny_image_proj("faceid_plusv2")) == "faceid_plusv2"
    assert detect_variant(tiny_image_proj("faceid_plusv2"), plusv2=False) == "faceid_plus"
    assert detect_variant(tiny_image_proj("plus_face")) == "plus_face"
    plus = tiny_image_proj("faceid_plusv2")
    assert "perceiver_resampler.layers.3.1.3.weight" in plus and "perceiver_resampler.layers.0.0.to_kv.weight" in plus
    bad = {k.replace("proj.2", "proj.1"): v for k, v in sd.items()}
    with pytest.raises(KeyError):
        build_image_projection(bad, "faceid")


def test_plusv2_shortcut_and_missing_inputs():
    """v2 (shortcut) differs from v1 on the same weights; a variant without its input says what to give."""
    sd = tiny_image_proj("faceid_plusv2")
    arc, clip = torch.randn(1, 512), torch.randn(1, 5, 48)
    with torch.no_grad():
        v1 = build_image_projection(sd, "faceid_plus")(arc, clip)
        v2 = build_image_projection(sd, "faceid_plusv2")(arc, clip)
        base = build_image_projection({k: v for k, v in sd.items() if not k.startswith("perceiver")}, "faceid")(arc)
    torch.testing.assert_close(v2, base + v1)
    with pytest.raises(ValueError, match="CLIP ViT-H"):
        build_image_projection(sd, "faceid_plusv2")(arc)
