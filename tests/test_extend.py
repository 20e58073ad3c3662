"""ExVideo post-tuning (extend/): bounce positions, RIFLEx, and the extended model computing the base
model's function at init, for every DiT family."""

from __future__ import annotations

import math

import pytest
import torch

from longvideo.errors import UserError
from longvideo.extend import ExtendConfig, bounce_positions, extend_dit, extended_config, trainable_globs
from longvideo.models.dit.rope import frequencies, intrinsic_component
from test_dit import inputs, make, randomize_

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bounce_positions_are_exvideos():
    # DiffSynth PositionalID(max_id=25, repeat_length=20): 0..24, 23..4, 5..24, 23..4, ...
    want = list(range(25)) + list(range(23, 3, -1)) + list(range(5, 25)) + list(range(23, 3, -1))
    assert bounce_positions(len(want), 25, 20) == want
    assert bounce_positions(128, 25, 20)[-1] == want[127 - 80]  # period 40
    assert bounce_positions(12, 4) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]  # repeat 0: the whole range
    assert bounce_positions(3, 9) == [0, 1, 2]
    assert max(bounce_positions(1000, 9, 5)) == 8 and min(bounce_positions(1000, 9, 5)[9:]) == 3


def test_riflex_component_and_frequency():
    assert intrinsic_component(16, 256.0, 33) == 4  # HunyuanVideo, the paper's k
    k = intrinsic_component(16, 10000.0, 9)  # the bundled model's temporal RoPE, 9 latent frames
    base, new = frequencies(16, 10000.0), frequencies(16, 10000.0, (k, 33))
    assert 2 * math.pi / base[k - 1] > 9 >= 2 * math.pi / base[k - 2]
    assert math.isclose(2 * math.pi / new[k - 1], 33 / 0.9, rel_tol=1e-6)
    others = [i for i in range(8) if i != k - 1]
    assert torch.equal(base[others], new[others])


def _same_function(base, ext, frames: int):
    kw = inputs(base.cfg, b=2, t=frames, h=4, w=4)
    with torch.no_grad():
        torch.testing.assert_close(ext(**kw), base(**kw), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-motion", "tiny-full3d", "tiny-parallel"])
def test_extended_model_starts_as_the_base(name):
    # position "none" (RoPE) / the table (motion): the same function; motion up to the base window
    base = randomize_(make(name)).eval()
    ext_cfg = ExtendConfig(frames=12, base_frames=4, position="none")
    ext = extend_dit(base, ext_cfg).eval()
    assert ext.cfg.temporal_adapter
    added = [k for k in ext.state_dict() if k not in base.state_dict()]
    assert added and all("temporal_adapter" in k or k.endswith("pos_table") for k in added)
    for frames in (1, 3, 4) if name == "tiny-motion" else (1, 4, 9):
        _same_function(base, ext, frames)
    # the adapter is live: perturbing it changes the output (randomly: a uniform shift of every channel is
    # what the blocks' LayerNorms remove)
    with torch.no_grad():
        w = next(p for n, p in ext.named_parameters() if "temporal_adapter" in n)
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    kw = inputs(base.cfg, b=1, t=3, h=4, w=4)
    assert not torch.allclose(ext(**kw), base(**kw), atol=1e-5)


def test_motion_table_bounces_and_refuses_longer_clips():
    base = randomize_(make("tiny-motion")).eval()
    ext = extend_dit(base, ExtendConfig(frames=7, base_frames=3)).eval()
    tables = [p for n, p in ext.named_parameters() if n.endswith("pos_table")]
    assert tables and all(t.shape == (7, base.cfg.dim) for t in tables)
    assert torch.equal(tables[0][3], tables[0][1]) and torch.equal(
        tables[0][4], tables[0][0]
    )  # 0 1 2 1 0 1 2
    kw = inputs(base.cfg, b=1, t=7, h=4, w=4)
    assert ext(**kw).shape == kw["x"].shape
    with pytest.raises(ValueError, match="position table"):
        ext(**inputs(base.cfg, b=1, t=8, h=4, w=4))


def test_rope_positions_change_only_long_range():
    base = randomize_(make("tiny-full3d")).eval()
    riflex = extend_dit(base, ExtendConfig(frames=16, base_frames=4)).eval()  # auto -> riflex
    interp = extend_dit(base, ExtendConfig(frames=16, base_frames=4, position="interp")).eval()
    assert (
        riflex.cfg.rope_riflex_k == intrinsic_component(8, 10000.0, 4) and riflex.cfg.rope_riflex_frames == 16
    )
    assert interp.cfg.rope_scale == [4.0, 1.0, 1.0]
    kw = inputs(base.cfg, b=1, t=6, h=4, w=4)
    with torch.no_grad():
        out, r, i = base(**kw), riflex(**kw), interp(**kw)
    assert not torch.allclose(out, r, atol=1e-5) and not torch.allclose(out, i, atol=1e-5)
    assert (r - out).abs().mean() < (i - out).abs().mean()  # RIFLEx moves one component, interp all


def test_trainable_globs_and_bad_configs():
    assert trainable_globs(make("tiny-motion").cfg, ExtendConfig()) == ["*attn_temporal.*"]
    assert "*.attn1.*" in trainable_globs(make("tiny-full3d").cfg, ExtendConfig())
    assert trainable_globs(make("tiny-full3d").cfg, ExtendConfig(trainable=["x.*"])) == ["x.*"]
    with pytest.raises(UserError, match="base_frames"):
        ExtendConfig(frames=4, base_frames=4).validate()
    with pytest.raises(UserError, match="position"):
        ExtendConfig(frames=8, base_frames=4, position="yarn").validate()
    with pytest.raises(UserError, match="position table"):
        extended_config(make("tiny-motion").cfg, ExtendConfig(frames=8, base_frames=4, position="interp"))
