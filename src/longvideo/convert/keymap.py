"""Shared by the VAE converters: an explicit module map (ours -> theirs) applied to a state dict.

Each converter supplies its own module map and its own `fit` (how a source tensor takes the target's shape);
`apply_module_map` walks the map over `.weight` / `.bias`, checks that every source and target key is used
once, and raises one ValueError naming the source format and listing what does not match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from longvideo.models.vae.layers import CausalConv3d, Norm
from longvideo.models.vae.model import CausalVAE, VAEConfig

Fit = Callable[[Tensor, torch.Size, str, str], Tensor]


def param_owner(model: nn.Module, path: str) -> str:
    """The path of the module holding `path`'s parameters, through our CausalConv3d / Norm wrappers."""
    try:
        m = model.get_submodule(path)
    except AttributeError as e:
        raise AssertionError(f"module map names {path}, which the model does not have") from e
    if isinstance(m, CausalConv3d):
        return f"{path}.conv"
    if isinstance(m, Norm):
        return f"{path}.norm"
    return path


def apply_module_map(
    sd: dict[str, Tensor],
    model: nn.Module,
    pairs: Iterable[tuple[str, str]],
    fit: Fit,
    source_name: str,
    *,
    collect_mismatches: bool = True,
    unmapped_is_value_error: bool = False,
) -> dict[str, Tensor]:
    """`model`'s state dict built from `sd` by the module map `pairs` (our path, their path).

    `fit(src, target_shape, skey, tkey)` returns the source tensor in the target's shape or raises
    ValueError("shape mismatch: ..."); with `collect_mismatches` those are listed in the one ValueError
    (prefix dropped), else the first propagates. Target keys never produced are a module-map bug
    (AssertionError), or with `unmapped_is_value_error` part of the ValueError when no source key is missing.
    """
    target = {k: v.shape for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    for ours, theirs in pairs:
        owner = param_owner(model, ours)
        for p in ("weight", "bias"):
            tkey, skey = f"{owner}.{p}", f"{theirs}.{p}"
            if tkey not in target:
                raise AssertionError(f"module map names {tkey}, which the model does not have")
            if tkey in out or skey in used:
                raise AssertionError(f"module map uses {tkey} / {skey} twice")
            used.add(skey)
            if skey not in sd:
                missing.append(skey)
                continue
            if not collect_mismatches:
                out[tkey] = fit(sd[skey], target[tkey], skey, tkey)
                continue
            try:
                out[tkey] = fit(sd[skey], target[tkey], skey, tkey)
            except ValueError as e:
                mismatched.append(str(e).removeprefix("shape mismatch: "))
    unmapped = sorted(set(target) - set(out))
    leftover = sorted(set(sd) - used)
    never = unmapped if unmapped_is_value_error and not missing else []
    if missing or leftover or mismatched or never:
        raise ValueError(
            f"{source_name} state dict does not match the config:"
            + (f" missing source keys {missing};" if missing else "")
            + (f" unused source keys {leftover};" if leftover else "")
            + (f" shape mismatches {mismatched};" if mismatched else "")
            + (f" target keys never produced {never};" if never else "")
        )
    if unmapped and not unmapped_is_value_error:
        raise AssertionError(f"module map never produces target keys {unmapped}")
    return out


def check_all_set(vae: nn.Module) -> None:
    """Raise ValueError if a parameter or buffer of `vae` is still on the meta device."""
    still_meta = [n for n, t in (*vae.named_parameters(), *vae.named_buffers()) if t.is_meta]
    if still_meta:
        raise ValueError(f"tensors left uninitialised: {still_meta}")


def load_on_meta(cfg: VAEConfig, state_dict: dict[str, Tensor], dtype: torch.dtype) -> CausalVAE:
    """Our `CausalVAE` for `cfg`, built on the meta device; `state_dict` (cast to `dtype`) is its tensors."""
    converted = {k: v.to(dtype) for k, v in state_dict.items()}
    with torch.device("meta"):
        vae = CausalVAE(cfg)
    vae.load_state_dict(converted, strict=True, assign=True)
    check_all_set(vae)
    return vae.eval()


__all__ = ["apply_module_map", "check_all_set", "load_on_meta", "param_owner"]
