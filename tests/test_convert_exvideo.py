"""ExVideo's extended SVD temporal blocks on diffusers' UNetSpatioTemporalConditionModel
(longvideo.convert.exvideo_svd).

Parity: the `exvideo_temporal_block_{base,extended}` fixtures (one DiffSynth TemporalAttentionBlock, and its
ExVideo extension to 32 frames, run by DiffSynth's code) are reproduced by a diffusers
TransformerSpatioTemporalModel holding the mapped weights, run through diffusers' own forward: its spatial
block's output is replaced by the fixture's input (a forward hook), its temporal block's output is the one
compared. Fixtures are found through $LONGVIDEO_FIXTURES (default ../shared/fixtures).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from longvideo.convert import exvideo_svd as ex
from longvideo.errors import UserError
from seed_fixtures import FIXTURES

pytest.importorskip("diffusers")
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _fixture(kind: str):
    name = f"exvideo_temporal_block_{kind}"  # one json for both, then NAME.safetensors + NAME.io.safetensors
    files = [
        FIXTURES / "exvideo_temporal_block.json",
        *(FIXTURES / f"{name}{e}" for e in (".safetensors", ".io.safetensors")),
    ]
    if not all(f.is_file() for f in files):
        pytest.skip(f"ExVideo fixture {name} not found in {FIXTURES} (set LONGVIDEO_FIXTURES)")
    meta = json.loads((FIXTURES / "exvideo_temporal_block.json").read_text())
    sd = load_file(str(FIXTURES / f"{name}.safetensors"))
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    return meta, meta[kind], sd, io


def _tsm(cfg: dict, monkeypatch) -> TransformerSpatioTemporalModel:
    """A TSM for the fixture's block config. Its input GroupNorm(32) cannot take the fixture's 16 channels,
    and it is bypassed here anyway (the spatial block's output is replaced): one group while building."""
    real = nn.GroupNorm
    with monkeypatch.context() as m:
        m.setattr(nn, "GroupNorm", lambda num_groups, num_channels, **kw: real(1, num_channels, **kw))
        return TransformerSpatioTemporalModel(
            num_attention_heads=cfg["num_attention_heads"], attention_head_dim=cfg["attention_head_dim"],
            in_channels=cfg["in_channels"], cross_attention_dim=cfg["cross_attention_dim"],
        ).eval()  # fmt: skip


def _run_temporal(tsm: TransformerSpatioTemporalModel, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Diffusers' TSM forward with the spatial block's output set to x (T, C, H, W); the temporal block's
    output as (T, C, H, W)."""
    t, c, h, w = x.shape
    tokens = x.permute(0, 2, 3, 1).reshape(t, h * w, c)
    seen = {}
    h1 = tsm.transformer_blocks[0].register_forward_hook(lambda m, a, o: tokens)
    h2 = tsm.temporal_transformer_blocks[0].register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
    try:
        tsm(x, encoder_hidden_states=text[None].expand(t, -1, -1), image_only_indicator=torch.zeros(1, t))
    finally:
        h1.remove()
        h2.remove()
    return seen["out"].reshape(t, h, w, c).permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind", ["base", "extended"])
@torch.no_grad()
def test_fixture_parity(kind, monkeypatch):
    _, spec, sd, io = _fixture(kind)
    assert io["x"].shape[0] == spec["frames"]
    tsm = _tsm(spec["config"], monkeypatch)
    converted = ex.convert_block(sd)
    frames = spec["config"]["add_positional_conv"]
    if frames:
        ex.patch_tsm(tsm, frames)
    missing, unexpected = tsm.load_state_dict(converted, strict=False)
    assert not unexpected
    # what the fixture does not hold: the spatial path and the time mixer, bypassed here
    assert all(
        k.startswith(("transformer_blocks.", "proj_in", "proj_out", "norm.", "time_mixer")) for k in missing
    )
    out = _run_temporal(tsm, io["x"], io["text_emb"])
    err = (out - io["out"]).abs().max().item()
    print(f"exvideo_temporal_block_{kind}: max abs diff {err:.2e}")
    assert err <= 1e-4


def test_positional_ids_match_the_fixture():
    meta = _fixture("extended")[0]
    assert ex.positional_ids(32) == meta["position_ids_32"]
    ids = ex.positional_ids(128)
    assert max(ids) == 24 and min(ids[25:]) == 4  # always a position SVD-XT was trained on


def _tiny_unet() -> UNetSpatioTemporalConditionModel:
    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1,
        cross_attention_dim=16, num_attention_heads=(2, 2), num_frames=4,
    ).eval()  # fmt: skip


def _unet_inputs(frames: int):
    g = torch.Generator().manual_seed(1)
    return dict(
        sample=torch.randn(1, frames, 8, 8, 8, generator=g),
        timestep=torch.tensor(10.0),
        encoder_hidden_states=torch.randn(1, 1, 16, generator=g),
        added_time_ids=torch.randn(1, 3, generator=g),
    )


@torch.no_grad()
def test_identity_init_equals_svd_and_runs_past_25_frames():
    """At ExVideo's initialisation the extended UNet computes SVD's function for <= 25 frames (the table
    rows are SVD's sinusoid, the conv is the identity); it runs to the table's length and refuses more."""
    unet = _tiny_unet()
    base = unet(**_unet_inputs(6)).sample
    for p in ex.tsm_paths(unet):
        tsm = unet.get_submodule(p)
        ex.patch_tsm(tsm, 32)
        ex.identity_init(tsm)
    torch.testing.assert_close(unet(**_unet_inputs(6)).sample, base, rtol=0, atol=1e-5)
    assert unet(**_unet_inputs(32)).sample.shape == (1, 32, 4, 8, 8)
    with pytest.raises(UserError, match="covers 32 frames; asked for 33"):
        unet(**_unet_inputs(33))


@torch.no_grad()
def test_trained_conv_mixes_neighbour_frames_in_diffusers_layout():
    """The hook's reshape puts (frame, height, width) where the conv expects them: a conv that only reads
    the previous frame (time tap 0) shifts the temporal block's input by one frame (reflect at frame 0)."""
    unet = _tiny_unet()
    p = ex.tsm_paths(unet)[0]
    tsm = unet.get_submodule(p)
    ex.patch_tsm(tsm, 8)
    ex.identity_init(tsm)
    conv = tsm.positional_conv
    conv.weight.zero_()
    conv.weight[:, :, 0, 1, 1] = torch.eye(conv.in_channels)
    seen = {}
    block = tsm.temporal_transformer_blocks[0]
    block.register_forward_pre_hook(lambda m, a: seen.setdefault("before", a[0]), prepend=True)  # runs first
    block.register_forward_hook(lambda m, a, o: seen.setdefault("after", a[0]))  # the args after the conv
    unet(**_unet_inputs(5))
    before, after = (seen[k].reshape(-1, 5, *seen[k].shape[1:]) for k in ("before", "after"))
    torch.testing.assert_close(after[:, 1:], before[:, :-1])
    torch.testing.assert_close(after[:, 0], before[:, 1])  # reflect padding at the first frame


def _release_like_state_dict() -> dict[str, torch.Tensor]:
    """ExVideo-SVD-128f's key set and shapes (DiffSynth names), as meta tensors: no memory."""
    chans = {7: 320, 17: 320, 29: 640, 39: 640}
    chans.update({i: 1280 for i in ex.SVD_TEMPORAL_BLOCKS if i not in chans})
    chans.update({144: 640, 154: 640, 164: 640, 175: 320, 185: 320, 195: 320})
    sd = {}
    for i, c in chans.items():
        shapes = {
            "positional_embedding.embeddings": (128, c), "positional_conv.weight": (c, c, 3, 3, 3),
            "positional_conv.bias": (c,), "positional_embedding_proj.0.weight": (4 * c, c),
            "positional_embedding_proj.0.bias": (4 * c,), "positional_embedding_proj.2.weight": (c, 4 * c),
            "positional_embedding_proj.2.bias": (c,), "act_fn_in.proj.weight": (8 * c, c),
            "act_fn_in.proj.bias": (8 * c,), "ff_in.weight": (c, 4 * c), "ff_in.bias": (c,),
            "act_fn_out.proj.weight": (8 * c, c), "act_fn_out.proj.bias": (8 * c,),
            "ff_out.weight": (c, 4 * c), "ff_out.bias": (c,),
            "attn2.to_k.weight": (c, 1024), "attn2.to_v.weight": (c, 1024),
        }  # fmt: skip
        for n in ("norm_in", "norm1", "norm2", "norm_out"):
            shapes |= {f"{n}.weight": (c,), f"{n}.bias": (c,)}
        for a in ("attn1", "attn2"):
            shapes |= {
                f"{a}.{q}.weight": (c, c) for q in ("to_q", "to_k", "to_v") if f"{a}.{q}.weight" not in shapes
            }
            shapes |= {f"{a}.to_out.weight": (c, c), f"{a}.to_out.bias": (c,)}
        sd |= {f"blocks.{i}.{k}": torch.empty(s, device="meta") for k, s in shapes.items()}
    return sd


def test_release_layout_maps_onto_svd_xt():
    """Every key of the release layout lands on SVD-XT's UNet with its shape; the count matches the
    release file size (832.96M parameters = 3.33 GB in fp32)."""
    sd = ex.convert_exvideo_state_dict(_release_like_state_dict())
    assert ex.check_against_svd(sd) == 128
    n = sum(v.numel() for v in sd.values())
    assert abs(n - 832.96e6) < 0.01e6, n


def test_wrong_files_are_named():
    sd = _release_like_state_dict()
    with pytest.raises(UserError, match="lacks temporal blocks"):
        ex.convert_exvideo_state_dict({k: v for k, v in sd.items() if not k.startswith("blocks.195.")})
    with pytest.raises(UserError, match="holds an EasyAnimate Transformer3DModel"):
        ex.convert_exvideo_state_dict({"transformer_blocks.0.attn_temporal.x.weight": torch.zeros(1)})
    bad = dict(sd)
    bad["blocks.7.norm_in.weight"] = torch.empty(321, device="meta")
    with pytest.raises(
        UserError, match=r"down_blocks\.0\.attentions\.0\.temporal_transformer_blocks\.0\.norm_in"
    ):
        ex.check_against_svd(ex.convert_exvideo_state_dict(bad))


def test_cli_writes_the_extension_in_diffusers_names(tmp_path, monkeypatch, capsys):
    """The release layout with the fixture's (tiny) block at all 16 places; SVD-XT's shapes are not checked
    here (test_release_layout_maps_onto_svd_xt does that on the meta device)."""
    from safetensors.torch import save_file

    from longvideo.cli import main

    _, _, block, _ = _fixture("extended")
    save_file({f"blocks.{i}.{k}": v.clone() for i in ex.SVD_TEMPORAL_BLOCKS for k, v in block.items()},
              tmp_path / "model.safetensors")  # fmt: skip
    monkeypatch.setattr(ex, "check_against_svd", lambda sd: 32)
    assert (
        main(["convert", "--from", "exvideo-svd", str(tmp_path / "model.safetensors"), str(tmp_path / "x")])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert (info["num_frames"], info["temporal_blocks"]) == (32, 16)
    sd = ex.read_extension(tmp_path / "x")
    assert torch.equal(sd["mid_block.attentions.0.positional_conv.weight"], block["positional_conv.weight"])
    assert torch.equal(
        sd["up_blocks.3.attentions.2.time_proj.embeddings"], block["positional_embedding.embeddings"]
    )
