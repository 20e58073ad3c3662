"""Sequence parallelism for the video DiT, applied from outside: a clip's tokens are split along latent frames
over the sp ranks, and the attentions that see across frames are made global by Ulysses all-to-all, ring
attention, or both (USP).

    sequence_parallel(model, mesh, ring=0)     # in place; parallelize() calls it (step 1 of its order)
    out = model(x, t, text, text_mask, cond)    # the same call, the same output on every sp rank

What one forward does (the model's embed -> blocks -> head seam, models/dit/model.py):
1. `embed` on every rank (the same inputs everywhere: the same noise and text), then this rank keeps its
   contiguous share of the frames -- uneven shares allowed (9 latent frames on 2 ranks: 5 and 4) -- with the
   BlockInputs of that share (`local_inputs`: positions, RoPE rows and frame indices of the whole clip).
2. The blocks run on the share. Each attention kind is local or global by the family's plan (`PLANS`, data):
   a global one gets `SPAttention`: Ulysses (all-to-all from sequence-split to head-split, attention over
   the whole sequence on heads/U heads, and back) when the heads divide by the Ulysses degree, ring
   attention (ring.py) over the ring ranks for what is left -- USP: Ulysses inside, ring across -- and
   plain ring over all sp ranks when the heads do not divide (Wan 1.3B: 12 heads on 8 ranks).
3. `head` on the share (per token), the outputs gathered along frames: the whole prediction on every rank.

A clip with fewer latent frames than sp ranks (an image, T = 1) runs whole on every rank: an image is 1/T
of a clip's tokens, so memory is not what limits it, and splitting the batch instead would need it to
divide by sp.

Gradients: a rank's share contributes its part of each parameter's gradient (the collectives route the
cross-rank terms); the output's gradient is scaled by sp on the way back, so that the MEAN over the sp ranks
is the one-process gradient -- a clip run whole gives the whole gradient on every rank, whose mean is itself.
Data parallel then averages over the dp x sp ranks as it would over dp alone, one reduction (apply.py;
NCCL's and gloo's plain average, no pre-multiplied sum). Every rank runs the same collectives in the same
order, also when activation checkpointing re-runs a block in the backward pass (which is why each block
reads its share from its own BlockInputs argument, not from state left by the forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longvideo.errors import UserError
from longvideo.models.dit.blocks import BlockInputs
from longvideo.models.dit.layers import TemporalAdapter, sdpa_attention
from longvideo.models.dit.motion import MotionAttention
from longvideo.models.dit.vchitect import FirstFrame
from longvideo.parallel.collectives import (
    all_to_all,
    broadcast,
    even_split,
    gather_replicated,
    gather_summed,
    scale_grad,
)
from longvideo.parallel.mesh import Mesh
from longvideo.parallel.ring import ring_attention


@dataclass(frozen=True)
class SPPlan:
    """Where a family's tokens split and what each attention kind does with a share of the frames."""

    global_kinds: tuple[str, ...]  # attend across frames: SPAttention (Ulysses / ring / USP)
    local_kinds: tuple[str, ...]  # within a frame or to the (replicated) caption: unchanged
    split: str = "frames"  # video tokens (B, T*H*W, D), t outer, split into contiguous frame shares
    gather: str = "output"  # `head` runs on the share (per token); its output is gathered along frames
    text: str = "replicated"  # "replicated": every rank holds the caption; "frames": the dual stream's
    # per-frame text copies (B, T*L, D) split like the video, and the cross branch's keys -- frame 0's text --
    # broadcast from the rank that holds frame 0 (vchitect.FirstFrame)
    halo: bool = False  # motion: each motion attention's 3x3x3 conv adapter (ExVideo) reads 1 frame each side


PLANS: dict[str, SPPlan] = {
    # Open-Sora-Plan v1.2: one full attention over t*h*w tokens; RoPE rows are the share's (local_inputs)
    "full3d": SPPlan(global_kinds=("full",), local_kinds=("cross",)),
    # EasyAnimate: per-frame spatial and cross attention stay local; the motion module's temporal (across
    # frames, optionally over a patch neighbourhood) and global (all tokens) attentions are global; frame
    # positions come from the clip's indices (BlockInputs.frames)
    "motion": SPPlan(global_kinds=("temporal", "global"), local_kinds=("spatial", "cross"), halo=True),
    # Vchitect-2.0: spatial (frame + its text) and cross branches local, temporal branch global -- also on a
    # rank holding one frame, since a block decides by the clip's frame count, not the share's
    "parallel": SPPlan(global_kinds=("temporal",), local_kinds=("spatial", "cross")),
}


def plan_for(cfg) -> SPPlan:
    plan = PLANS[cfg.family]
    if cfg.family == "parallel" and cfg.text_stream:
        return SPPlan(plan.global_kinds, plan.local_kinds, text="frames")
    return plan


@dataclass(frozen=True)
class Share:
    """The frames of one forward over the sp ranks: sizes[r] latent frames on sp rank r, contiguous."""

    sizes: tuple[int, ...]
    rank: int

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def stop(self) -> int:
        return self.start + self.sizes[self.rank]


class SPGroups:
    """This rank's sequence-parallel process groups and the share of the forward in progress."""

    def __init__(self, mesh: Mesh, ring: int):
        self.sp = mesh.group("sp")
        self.size, self.rank = mesh.size("sp"), mesh.rank("sp")
        self.ring_size = ring
        self.ulysses_size = self.size // ring
        self.ulysses, self.ring = mesh.sp_groups(ring)

    def share(self, c: BlockInputs) -> Share | None:
        """The share a block's BlockInputs describe; None when the clip runs whole on every rank."""
        if c.grid[0] == c.num_frames:
            return None
        return Share(tuple(even_split(c.num_frames, self.size)), self.rank)


class SPAttention:
    """An AttentionFn for a global attention kind: q, k, v (B', heads, L, d) hold this rank's share of the
    frames' tokens (L = its frames x the tokens each frame contributes to the sequence, frames outer), the
    result is attention over the whole clip's sequence for these queries."""

    def __init__(self, groups: SPGroups):
        self.groups = groups
        self.share: Share | None = None  # set by the block wrapper before every block call
        self.__name__ = "sequence_parallel"

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        share = self.share
        if share is None:
            return sdpa_attention(q, k, v, mask)
        if mask is not None:
            raise ValueError("sequence-parallel attention takes no mask (the DiT's global kinds have none)")
        g = self.groups
        per_frame = q.shape[2] // share.sizes[share.rank]  # tokens each frame adds to the sequence
        lengths = [n * per_frame for n in share.sizes]  # every sp rank's sequence length
        heads = q.shape[1]
        if g.ulysses_size == 1 or heads % g.ulysses_size:  # ring over all sp ranks
            return ring_attention(q, k, v, group=g.sp, sizes=lengths)
        u, me = g.ulysses_size, g.rank
        ring_index = me // u
        mine = lengths[ring_index * u : (ring_index + 1) * u]  # this Ulysses group's ranks' lengths
        hs = [heads // u] * u
        # (B', heads, L_r, d) -> (B', heads / U, L_group, d): the Ulysses group's whole sequence, some heads
        q, k, v = (all_to_all(y, g.ulysses, 1, 2, hs, mine) for y in (q, k, v))
        if g.ring is None:
            o = sdpa_attention(q, k, v)
        else:
            groups = [sum(lengths[j * u : (j + 1) * u]) for j in range(g.ring_size)]
            o = ring_attention(q, k, v, group=g.ring, sizes=groups)
        return all_to_all(o, g.ulysses, 2, 1, mine, hs)


def _halo_adapter(adapter: TemporalAdapter, attn: SPAttention) -> None:
    """ExVideo's 3x3x3 conv adapter on a share of the frames: the frame before and after the share come
    from the neighbouring ranks (replicate padding only at the clip's ends): it equals the whole-clip conv."""
    conv = adapter.conv
    inner = adapter.forward

    def forward(h: Tensor) -> Tensor:  # (B, T_share, H, W, D)
        share = attn.share
        if share is None:
            return inner(h)
        ends = gather_summed(torch.stack([h[:, 0], h[:, -1]], dim=1), attn.groups.sp)  # (P, B, 2, H, W, D)
        r, last = share.rank, len(share.sizes) - 1
        before = ends[r - 1][:, 1:] if r > 0 else h[:, :1]
        after = ends[r + 1][:, :1] if r < last else h[:, -1:]
        x = torch.cat([before, h, after], dim=1).permute(0, 4, 1, 2, 3)  # (B, D, T + 2, H, W)
        x = F.pad(x, (1, 1, 1, 1, 0, 0), mode="replicate")
        return F.conv3d(x, conv.weight, conv.bias).permute(0, 2, 3, 4, 1)

    adapter.forward = forward


def _first_frame_fn(attn: SPAttention):
    def select(x: Tensor) -> Tensor:  # (B, T_share, ...) -> frame 0 of the clip, from sp rank 0
        y = x[:, 0]
        return y if attn.share is None else broadcast(y, attn.groups.sp, 0)

    return select


def choose_ring(heads: list[int], sp: int, ring: int) -> int:
    """The ring degree: `ring` if given (it must divide sp), else 1 (all Ulysses) when every global
    attention's heads divide by sp, else sp (all ring). Ulysses moves each token once per attention; ring
    attention passes every key/value block around the ring, so Ulysses is the default where it fits."""
    if ring:
        if ring < 1 or sp % ring:
            raise UserError(f"parallel: ring={ring} must divide sp={sp} (sp = ulysses x ring)")
        return ring
    return 1 if all(h % sp == 0 for h in heads) else sp


def sequence_parallel(model: nn.Module, mesh: Mesh, ring: int = 0) -> nn.Module:
    """Split `model` (a VideoDiT) along frames over the mesh's sp ranks, in place: its forward, its blocks'
    forwards and its global attention ops' functions are replaced; state-dict keys are unchanged."""
    cfg = model.cfg
    plan = plan_for(cfg)
    ops = model.attention_ops(plan.global_kinds)
    heads = [cfg.motion_heads if cfg.family == "motion" else cfg.num_heads]
    groups = SPGroups(mesh, choose_ring(heads, mesh.size("sp"), ring))
    attn = SPAttention(groups)
    for op in ops:
        op.attention_fn = attn
    if plan.halo:
        for m in model.modules():
            if isinstance(m, MotionAttention) and m.temporal_adapter is not None:
                _halo_adapter(m.temporal_adapter, attn)
    if plan.text == "frames":
        for m in model.modules():
            if isinstance(m, FirstFrame):
                m.select_fn = _first_frame_fn(attn)
    for block in model.transformer_blocks:
        inner = block.forward

        def block_forward(x, text, c, _inner=inner):
            attn.share = groups.share(c)
            return _inner(x, text, c)

        block.forward = block_forward

    def forward(x, t, text, text_mask=None, cond=None, pooled=None):
        h, text, c = model.embed(x, t, text, text_mask, cond, pooled)
        frames = c.grid[0]
        if frames < groups.size:  # an image or a very short clip: whole on every rank
            return model.head(model.run_blocks(h, text, c), c)
        share = Share(tuple(even_split(frames, groups.size)), groups.rank)
        n = h.shape[1] // frames  # tokens per frame
        h = h[:, share.start * n : share.stop * n]
        if plan.text == "frames":
            per = text.shape[1] // frames
            text = text[:, share.start * per : share.stop * per]
        local = model.local_inputs(c, torch.arange(share.start, share.stop, device=h.device))
        out = model.head(model.run_blocks(h, text, local), local)  # (B, C, T_share * pt, H, W)
        pt = cfg.patch_size[0]
        out = gather_replicated(out, groups.sp, 2, [s * pt for s in share.sizes])
        return scale_grad(out, float(groups.size))  # the mean over sp ranks: the one-process gradient

    model.forward = forward
    model.sp_groups = groups
    return model


def check_frames(latent_frames: int, patch_t: int, sp: int) -> None:
    """A one-line error when a clip of `latent_frames` cannot give every sp rank a frame."""
    frames = latent_frames // patch_t
    if sp > 1 and frames < sp:
        raise UserError(f"--sp {sp} needs at least {sp} latent frames per window ({frames} here): "
                        "lower --sp or generate more frames")  # fmt: skip


__all__ = ["PLANS", "SPAttention", "SPPlan", "check_frames", "choose_ring", "plan_for", "sequence_parallel"]
