"""Start a DiT from another trained DiT (multi-stage training, `init` in a training config).

Same architecture: the weights load as they are; branches that start at zero (ZERO_INIT_BRANCHES) may be
missing from the init, so a stage can switch them on and still compute the init's function.

A smaller patch (e.g. (1, 2, 2) -> (1, 1, 1): 4x the tokens on small latents): only the patch embedding and
the output layer depend on the patch, so they are resized and every block is kept (FlexiViT's observation:
a transformer's blocks carry over between patch sizes). With a factor f per axis:
- embedding: new kernel cell i = the sum of old cells i*f .. i*f+f-1, so a token embeds its one cell as the
  old token embedded a patch filled with that value;
- output: new value i = the mean of old values i*f .. i*f+f-1 (the old token's values, pooled);
and `model.rope_scale` should be multiplied by f on the resized axes, so the tokens' RoPE positions keep the
old geometry (positions are divided by rope_scale).

More blocks (`model.num_layers` above the init's; PixArt-style blocks): old block i becomes block
i * new // old, so the new ones sit spread between them (6 -> 9: new at 2, 5, 8), and each new block's
residual outputs (self-attention, cross-attention, feed-forward output layers) start at zero, so the grown
model computes the init's function and the new blocks learn from there -- the zero-initialised residual
growth of progressive training (Gong et al. 2019 grow BERT by stacking; this keeps the function exactly).
"""

from __future__ import annotations

from longvideo.errors import UserError
from longvideo.models.dit import VideoDiT
from longvideo.models.dit.blocks import PixArtBlock

# branches that start at zero, so a trained model without them may be loaded into a config that adds them
# and compute the same function (a stage can switch them on)
ZERO_INIT_BRANCHES = ("caption_pool.",)
EMBED, OUT_W, OUT_B = "pos_embed.proj.weight", "proj_out.weight", "proj_out.bias"


def load_init(model: VideoDiT, init: VideoDiT) -> str:
    """Load `init`'s weights into `model`. Returns a one-line account of any surgery ("" when none)."""
    sd, note = init.state_dict(), ""
    old, new = tuple(init.cfg.patch_size), tuple(model.cfg.patch_size)
    if old != new:
        sd = resize_patch(sd, old, new, init.cfg.out_channels)  # the init's layout; shapes checked below
        note = (
            f"init: patch {old} -> {new}: embedding cells summed, output values averaged "
            f"(rope_scale {list(model.cfg.rope_scale)})"
        )
    grown: list[int] = []
    if model.cfg.num_layers != init.cfg.num_layers:
        if not isinstance(model.transformer_blocks[0], PixArtBlock) or model.cfg.uvit_skips:
            raise UserError("init: only PixArt-style blocks without U-ViT skips can be grown deeper")
        sd, grown = grow_depth(sd, init.cfg.num_layers, model.cfg.num_layers)
        note = (note + "; " if note else "init: ") + (
            f"{init.cfg.num_layers} -> {model.cfg.num_layers} blocks: new blocks {grown} start as identities"
        )
    want = model.state_dict()
    bad = [k for k in sd if k in want and want[k].shape != sd[k].shape]
    if bad:
        raise UserError(
            f"init: the model config does not match the init transformer ({bad[0]}: "
            f"{tuple(sd[bad[0]].shape)} vs {tuple(want[bad[0]].shape)})"
        )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    new_blocks = tuple(f"transformer_blocks.{i}." for i in grown)
    missing = [k for k in missing if not k.startswith(ZERO_INIT_BRANCHES + new_blocks)]
    if missing or unexpected:
        raise UserError(
            f"init: the model config does not match the init transformer (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for i in grown:
        block = model.transformer_blocks[i]
        outs = [block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]]
        if block.attn_temporal is not None:
            outs.append(block.attn_temporal.proj_out)
        for out in outs:
            for p in out.parameters():
                p.data.zero_()
    return note


def grow_depth(sd: dict, old: int, new: int) -> tuple[dict, list[int]]:
    """Renumber the init's blocks for a deeper model: old block i -> i * new // old. Returns the state dict
    and the indices of the blocks the init lacks."""
    if new < old:
        raise UserError(f"init: {old} -> {new} blocks: a model may grow from its init, not lose blocks")
    place = [i * new // old for i in range(old)]
    out = {}
    for k, v in sd.items():
        if k.startswith("transformer_blocks."):
            _, i, rest = k.split(".", 2)
            k = f"transformer_blocks.{place[int(i)]}.{rest}"
        out[k] = v
    return out, [i for i in range(new) if i not in place]


def resize_patch(sd: dict, old: tuple, new: tuple, out_channels: int) -> dict:
    """A state dict for patch `new` from one for patch `old`, each axis of `old` a multiple of `new`'s."""
    if any(o % n for o, n in zip(old, new, strict=True)):
        raise UserError(f"init: patch {tuple(old)} -> {tuple(new)}: the new patch must divide the old one")
    f = [o // n for o, n in zip(old, new, strict=True)]
    sd = dict(sd)
    w = sd[EMBED]  # (D, C_in, *old)
    d, c = w.shape[:2]
    w = w.reshape(d, c, new[0], f[0], new[1], f[1], new[2], f[2])
    sd[EMBED] = w.sum(dim=(3, 5, 7)).contiguous()
    # output values are ordered (pt, ph, pw, C) per token (VideoDiT.unpatchify)
    ow, ob = sd[OUT_W], sd[OUT_B]  # (prod(old) * C, D), (prod(old) * C,)
    shape = (new[0], f[0], new[1], f[1], new[2], f[2], out_channels)
    sd[OUT_W] = ow.reshape(*shape, -1).mean(dim=(1, 3, 5)).reshape(-1, ow.shape[-1]).contiguous()
    sd[OUT_B] = ob.reshape(shape).mean(dim=(1, 3, 5)).reshape(-1).contiguous()
    return sd
