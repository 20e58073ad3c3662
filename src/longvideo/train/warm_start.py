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
"""

from __future__ import annotations

from longvideo.errors import UserError
from longvideo.models.dit import VideoDiT

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
    want = model.state_dict()
    bad = [k for k in sd if k in want and want[k].shape != sd[k].shape]
    if bad:
        raise UserError(
            f"init: the model config does not match the init transformer ({bad[0]}: "
            f"{tuple(sd[bad[0]].shape)} vs {tuple(want[bad[0]].shape)})"
        )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(ZERO_INIT_BRANCHES)]
    if missing or unexpected:
        raise UserError(
            f"init: the model config does not match the init transformer (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return note


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
