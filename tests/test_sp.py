"""Sequence parallelism (parallel/sp.py) in real gloo processes: for every family, the seeds' real-scale block
layouts at tiny width, odd frame counts, one frame per rank, heads that do not divide (ring), USP, dual-stream
text, U-ViT skips, checkpointing, LoRA and ExVideo-extended models -- the output and the parameter gradients
averaged over the sp ranks equal one process's, float64, random weights everywhere (<= 1e-10)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from gloo import run_gloo
from longvideo.errors import UserError
from longvideo.models.dit import build_dit, dit_preset
from longvideo.parallel import DistEnv, ParallelDims, build_mesh
from longvideo.parallel.collectives import even_split
from longvideo.parallel.sp import choose_ring, plan_for

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-10


def _real_scale(name: str, **kw) -> dict:
    """A seed's block layout (layers, heads, families' switches) at a tiny width."""
    small = {
        "osp-v1.2": dict(head_dim=6),
        "vchitect-2b": dict(head_dim=4, pooled_dim=8, pos_embed_max=8, pos_embed_base=4),
        "easyanimate-v1": dict(head_dim=4, motion_norm_groups=8, pos_embed_base=4),
    }
    cfg = dit_preset(name)
    return dataclasses.asdict(dataclasses.replace(cfg, in_channels=4, text_dim=8, **small[name], **kw))


def _tiny(name: str, **kw) -> dict:
    return dataclasses.asdict(dit_preset(name)) | kw


# name -> (DiTConfig fields, latent frames, extras)
_RIFLEX = {"temporal_adapter": True, "rope_riflex_k": 1, "rope_riflex_frames": 8}
_EA_ODD = {"num_layers": 8, "motion_attn_odd": ["temporal", "global"]}
CASES = {
    "full3d-odd": (_tiny("tiny-full3d"), 5, {}),
    "full3d-ring-heads3": (_tiny("tiny-full3d", num_heads=3, head_dim=12), 3, {}),
    "full3d-checkpoint-cond": (_tiny("tiny-full3d", cond_channels=5), 4, {"checkpoint": True}),
    "full3d-lora": (_tiny("tiny-full3d"), 3, {"lora": True}),
    "full3d-image": (_tiny("tiny-full3d"), 1, {}),
    "full3d-exvideo": (_tiny("tiny-full3d", **_RIFLEX), 3, {}),
    "motion-uvit-grid": (_tiny("tiny-motion"), 3, {}),
    "motion-exvideo": (_tiny("tiny-motion", temporal_pos_table=8, temporal_adapter=True), 5, {}),
    "parallel-one-frame-each": (_tiny("tiny-parallel"), 2, {}),
    "parallel-dual-stream": (_tiny("tiny-parallel-mmdit"), 3, {}),
    "parallel-exvideo-checkpoint": (_tiny("tiny-parallel", temporal_adapter=True), 3, {"checkpoint": True}),
    "osp-v1.2": (_real_scale("osp-v1.2"), 3, {}),
    "vchitect-2b": (_real_scale("vchitect-2b", num_layers=6), 3, {}),
    "easyanimate-v1": (_real_scale("easyanimate-v1", **_EA_ODD), 3, {}),
}


def _model(fields: dict, extras: dict):
    from longvideo.models.dit import DiTConfig

    torch.manual_seed(0)
    model = build_dit(DiTConfig(**fields), device="cpu")
    if extras.get("lora"):
        from longvideo.train.lora import LoRAConfig, add_lora

        model = add_lora(model, LoRAConfig(rank=2, feed_forward=True))
    model = model.double()
    with torch.no_grad():  # random weights everywhere: zero-initialised branches would hide bugs
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.15)
    return model


def _inputs(cfg, frames: int):
    g = torch.Generator().manual_seed(1)
    b, (pt, ph, pw) = 2, cfg.patch_size
    x = torch.randn(b, cfg.in_channels, frames * pt, 2 * ph, 2 * pw, generator=g, dtype=torch.float64)
    kw = {
        "text": torch.randn(b, 5, cfg.text_dim, generator=g, dtype=torch.float64),
        "text_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    }
    if cfg.cond_channels:
        kw["cond"] = torch.randn(b, cfg.cond_channels, *x.shape[2:], generator=g, dtype=torch.float64)
    if cfg.pooled_dim:
        kw["pooled"] = torch.randn(b, cfg.pooled_dim, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64) * 1000
    weight = torch.randn(b, cfg.out_channels, *x.shape[2:], generator=g, dtype=torch.float64)
    return x, t, kw, weight


def _run(model, x, t, kw, weight):
    model.zero_grad(set_to_none=True)
    out = model(x, t, **kw)
    (out * weight).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _cases_worker(names: list[str], sp: int, ring: int) -> dict:
    """On every rank: one process's output and gradients, and the sp model's (gradients averaged over sp)."""
    import torch.distributed as dist

    from longvideo.parallel import init_distributed
    from longvideo.parallel.apply import checkpoint_blocks
    from longvideo.parallel.sp import sequence_parallel

    torch.set_default_dtype(torch.float64)
    mesh = build_mesh(init_distributed("cpu"), ParallelDims(dp=-1, sp=sp))
    errors = {}
    for name in names:
        fields, frames, extras = CASES[name]
        ref_model = _model(fields, extras)
        x, t, kw, weight = _inputs(ref_model.cfg, frames)
        ref_out, ref_grads = _run(ref_model, x, t, kw, weight)
        model = sequence_parallel(copy.deepcopy(ref_model), mesh, ring)
        if extras.get("checkpoint"):
            checkpoint_blocks(model)
        out, grads = _run(model, x, t, kw, weight)
        for g in grads.values():
            dist.all_reduce(g, group=mesh.group("sp"))
            g /= sp
        scale = max(1.0, float(ref_out.abs().max()))
        worst = float((out - ref_out).abs().max()) / scale
        assert set(grads) == set(ref_grads), name
        for n, g in ref_grads.items():
            worst = max(worst, float((grads[n] - g).abs().max()) / max(1.0, float(g.abs().max())))
        errors[name] = (worst, len(ref_grads))
    return errors


def _check(results: list[dict]) -> None:
    for rank_errors in results:
        for name, (err, n) in rank_errors.items():
            assert n > 0
            assert err <= TOL, f"{name}: {err:.3g}"


@pytest.mark.slow
def test_every_family_on_two_ranks_equals_one_process():
    _check(run_gloo(_cases_worker, 2, list(CASES), 2, 0))


@pytest.mark.slow
def test_usp_and_ring_on_four_ranks_equal_one_process():
    """sp 4 as USP 2 (Ulysses) x 2 (ring), and as ring 4; 5 and 6 latent frames (2/1/1/1, 2/2/1/1)."""
    names = ["full3d-odd", "motion-exvideo", "parallel-dual-stream"]
    _check(run_gloo(_cases_worker, 4, names, 4, 2))
    _check(run_gloo(_cases_worker, 4, ["osp-v1.2", "full3d-ring-heads3"], 4, 4))


def test_plans_and_ring_choice():
    assert plan_for(dit_preset("tiny-full3d")).global_kinds == ("full",)
    assert plan_for(dit_preset("tiny-motion")).halo
    assert plan_for(dit_preset("tiny-parallel-mmdit")).text == "frames"
    assert plan_for(dit_preset("tiny-parallel")).text == "replicated"
    assert even_split(9, 2) == [5, 4] and even_split(5, 4) == [2, 1, 1, 1]
    assert choose_ring([24], 8, 0) == 1 and choose_ring([12], 8, 0) == 8 and choose_ring([12], 8, 2) == 2
    with pytest.raises(UserError, match="must divide"):
        choose_ring([4], 4, 3)


def test_sequence_parallel_of_one_rank_is_the_model():
    """A world of one (sp 1): parallelize leaves the model alone; the SP wrapper itself is never applied."""
    mesh = build_mesh(DistEnv())
    assert mesh.size("sp") == 1 and mesh.sp_groups(1) == (None, None)
