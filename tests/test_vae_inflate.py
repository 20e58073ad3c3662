"""Inflating a diffusers AutoencoderKL into our causal video VAE: tail init reproduces it frame by frame."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from longvideo.convert.image_vae import (  # noqa: E402
    inflate_autoencoder_kl,
    inflate_state_dict,
    vae_config_from_autoencoder_kl,
)
from longvideo.models.vae.model import split_frames  # noqa: E402

TOL = 1e-5
MIXED = {  # per-frame 2D convs where our config allows them: the 4D-copy path of the map
    "encoder_conv_in": "2d",
    "encoder_blocks": ["2d", "2d", "3d", "3d"],
    "decoder_blocks": ["3d", "3d", "2d", "2d"],
}


def tiny_image_vae(seed: int = 0, **kw) -> "diffusers.AutoencoderKL":
    """A 4-level AutoencoderKL (8x down) with every weight, norms included, randomly perturbed."""
    torch.manual_seed(seed)
    m = diffusers.AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        **kw,
    )
    with torch.no_grad():
        for p in m.parameters():  # norms off (1, 0), biases off their init: nothing trivially zero or one
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def image_vae():
    return tiny_image_vae()


@pytest.fixture(scope="module", params=["3d", "mixed"])
def pair(request, image_vae):
    overrides = MIXED if request.param == "mixed" else {}
    return image_vae, inflate_autoencoder_kl(image_vae, **overrides).eval()


def image_latents(image_vae, frames):  # (B, C, T, H, W) -> (B, c, T, h, w), each frame on its own
    b, c, t, h, w = frames.shape
    z = image_vae.encode(frames.transpose(1, 2).reshape(b * t, c, h, w)).latent_dist.mean
    return z.view(b, t, *z.shape[1:]).transpose(1, 2)


def image_decode(image_vae, z):
    b, c, t, h, w = z.shape
    x = image_vae.decode(z.transpose(1, 2).reshape(b * t, c, h, w)).sample
    return x.view(b, t, *x.shape[1:]).transpose(1, 2)


def maxdiff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- config


def kl_config(channels=(128, 256, 512, 512), **kw) -> dict:
    """A diffusers AutoencoderKL config dict (as in config.json) with one block per level."""
    n = len(channels)
    blocks = {"down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}
    return {"block_out_channels": list(channels), **blocks, **kw}


def test_config_translation(image_vae):
    cfg = vae_config_from_autoencoder_kl(dict(image_vae.config))
    assert cfg.base_channels == 8 and cfg.channel_mult == [1, 2, 2, 2] and cfg.num_res_blocks == 1
    assert cfg.down == ["spatial", "spacetime", "spacetime", ""]
    assert cfg.up == ["", "spatial", "spacetime", "spacetime"]
    assert cfg.temporal_factor == 4 and cfg.spatial_factor == 8
    assert cfg.encoder_conv_in == "3d" and cfg.encoder_blocks == cfg.decoder_blocks == ["3d"] * 4
    assert (cfg.norm_groups, cfg.latent_channels) == (4, 4)
    assert (cfg.scaling_factor, cfg.shift_factor) == (0.18215, 0.0)  # shift_factor None -> 0
    sd3 = kl_config(shift_factor=0.0609, scaling_factor=1.5305, latent_channels=16)
    one = vae_config_from_autoencoder_kl({**sd3, "mid_block_add_attention": False}, temporal_downsample=1)
    assert one.down == ["spatial", "spatial", "spacetime", ""]
    assert one.up == ["", "spatial", "spatial", "spacetime"]
    assert one.channel_mult == [1, 2, 4, 4] and one.norm_groups == 32 and one.latent_channels == 16
    assert one.shift_factor == 0.0609 and one.scaling_factor == 1.5305 and not one.mid_attention
    assert vae_config_from_autoencoder_kl(sd3, norm_groups=16).norm_groups == 16


@pytest.mark.parametrize(
    "config, overrides, match",
    [
        (kl_config(down_block_types=["AttnDownEncoderBlock2D"] * 4), {}, "DownEncoderBlock2D"),
        (kl_config(up_block_types=["UpDecoderBlock2D"]), {}, "up_block_types must be 4 x"),
        (kl_config(act_fn="gelu"), {}, "act_fn"),
        (kl_config(out_channels=4), {}, "in_channels"),
        (kl_config((64, 96)), {"temporal_downsample": 0}, "multiples of the first"),
        (kl_config(latents_mean=[0.0] * 4, latents_std=[1.0] * 4), {}, "latents_mean"),
        (kl_config(_class_name="AutoencoderTiny"), {}, "not an AutoencoderKL"),
        (kl_config((64, 128)), {}, "temporal_downsample=2: a 2-level VAE has 1 downsamplers"),
        (kl_config(), {"nope": 1}, "unknown VAEConfig override"),
        (kl_config(norm_num_groups=48), {}, "norm_groups"),  # VAEConfig.validate
    ],
)
def test_config_errors(config, overrides, match):
    with pytest.raises(ValueError, match=match):
        vae_config_from_autoencoder_kl(config, **overrides)


# ----------------------------------------------------------------------------- equality with the image VAE


@torch.no_grad()
def test_single_image_equals_image_vae(pair):
    image_vae, vae = pair
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ref = image_vae.encode(x).latent_dist
    post = vae.encode(x[:, :, None])
    assert maxdiff(post.mean[:, :, 0], ref.mean) <= TOL and maxdiff(post.logvar[:, :, 0], ref.logvar) <= TOL
    z = torch.randn(2, 4, 4, 4)
    assert maxdiff(vae.decode(z[:, :, None])[:, :, 0], image_vae.decode(z).sample) <= TOL


@torch.no_grad()
def test_video_latent_k_is_image_latent_of_frame_4k(pair):
    # Tail init puts each 2D kernel in the last temporal tap. A stride-2 causal conv's output n reads the
    # padded input [2n, 2n+1, 2n+2] (two copies of frame 0 in front), so its last tap is input frame 2n:
    # each space-time downsampler keeps the even frames, and after two of them latent k <- frame 4k.
    image_vae, vae = pair
    torch.manual_seed(2)
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    z = vae.encode(x).mean
    per_frame = image_latents(image_vae, x)
    assert z.shape[2] == 3 and maxdiff(z, per_frame[:, :, ::4]) <= TOL
    assert maxdiff(z[:, :, 1], per_frame[:, :, 3]) > 1e-2  # the frames differ: the check above has teeth


@torch.no_grad()
def test_decoded_frames_are_image_decodes_of_their_latent(pair):
    # TimeUpsample repeats frames (the first once) and the tail-init conv after it sees one copy, so latent
    # 0 gives 1 frame and each later latent 4 identical frames: the image VAE's decode of that latent.
    image_vae, vae = pair
    torch.manual_seed(3)
    z = torch.randn(1, 4, 3, 4, 4)
    frames = vae.decode(z)
    per_latent = image_decode(image_vae, z)
    assert frames.shape == (1, 3, 9, 32, 32)
    source = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 2])  # latent frame behind each output frame
    assert maxdiff(frames, per_latent[:, :, source]) <= TOL


@torch.no_grad()
def test_streaming_equals_whole(pair):
    _, vae = pair
    torch.manual_seed(4)
    x = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    whole = vae.encode(x).mean
    streamed = torch.cat([p.mean for p in vae.encode_stream(split_frames(x, 1))], dim=2)
    assert maxdiff(streamed, whole) <= TOL
    assert maxdiff(torch.cat(list(vae.decode_stream(whole, chunk=1)), dim=2), vae.decode(whole)) <= TOL


@torch.no_grad()
def test_without_quant_convs_identity_is_used():
    image_vae = tiny_image_vae(5, use_quant_conv=False, use_post_quant_conv=False)
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) for k in image_vae.state_dict())
    vae = inflate_autoencoder_kl(image_vae).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert maxdiff(vae.encode(x[:, :, None]).mean[:, :, 0], image_vae.encode(x).latent_dist.mean) <= TOL
    z = torch.randn(1, 4, 4, 4)
    assert maxdiff(vae.decode(z[:, :, None])[:, :, 0], image_vae.decode(z).sample) <= TOL


# ----------------------------------------------------------------------------- the map and its checks


def test_tail_init_and_no_shared_storage(image_vae):
    sd2 = image_vae.state_dict()
    cfg = vae_config_from_autoencoder_kl(dict(image_vae.config))
    sd3 = inflate_state_dict(sd2, cfg)
    w = sd3["encoder.down.1.resample.conv.conv.weight"]
    assert w.shape == (16, 16, 3, 3, 3) and torch.equal(
        w[:, :, 2], sd2["encoder.down_blocks.1.downsamplers.0.conv.weight"]
    )
    assert not w[:, :, :2].any()
    q = sd3["decoder.mid.attn_1.q.weight"]
    assert torch.equal(q[:, :, 0, 0], sd2["decoder.mid_block.attentions.0.to_q.weight"])
    assert torch.equal(
        sd3["decoder.up.3.block.0.conv1.conv.weight"][:, :, 2],
        sd2["decoder.up_blocks.0.resnets.0.conv1.weight"],
    )
    norm = sd3["encoder.norm_out.norm.weight"]
    assert torch.equal(norm, sd2["encoder.conv_norm_out.weight"])
    assert norm.data_ptr() != sd2["encoder.conv_norm_out.weight"].data_ptr()


def test_old_attention_names_are_accepted(image_vae):
    cfg = vae_config_from_autoencoder_kl(dict(image_vae.config))
    new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in image_vae.state_dict().items():
        for a, b in new.items():
            k = k.replace(f"attentions.0.{a}.", f"attentions.0.{b}.")
        old[k] = v
    assert any(".proj_attn." in k for k in old)
    ref, got = inflate_state_dict(image_vae.state_dict(), cfg), inflate_state_dict(old, cfg)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.pop("encoder.conv_in.bias"), r"missing source keys \['encoder.conv_in.bias'\]"),
        (lambda sd: sd.pop("decoder.up_blocks.3.resnets.0.conv_shortcut.weight"), "missing source keys"),
        (lambda sd: sd.update(extra=torch.zeros(1)), r"unused source keys \['extra'\]"),
        (
            lambda sd: sd.update({"encoder.conv_out.weight": torch.zeros(8, 16, 5, 5)}),
            r"shape mismatch: encoder.conv_out.weight \(8, 16, 5, 5\) cannot become encoder.conv_out.conv",
        ),
        (
            lambda sd: sd.update({"quant_conv.weight": torch.zeros(8, 8)}),
            r"shape mismatch: quant_conv.weight \(8, 8\)",
        ),
    ],
)
def test_bad_state_dicts_raise_clearly(image_vae, edit, match):
    sd = dict(image_vae.state_dict())
    edit(sd)
    with pytest.raises(ValueError, match=match):
        inflate_state_dict(sd, vae_config_from_autoencoder_kl(dict(image_vae.config)))


def test_config_and_weights_must_agree(image_vae):
    cfg = vae_config_from_autoencoder_kl(dict(image_vae.config), mid_attention=False)
    with pytest.raises(
        ValueError, match=r"unused source keys \['decoder.mid_block.attentions.0.group_norm.bias'"
    ):
        inflate_state_dict(image_vae.state_dict(), cfg)


def test_folder_equals_instance(image_vae, tmp_path):
    image_vae.save_pretrained(tmp_path, safe_serialization=True)
    from_folder = inflate_autoencoder_kl(tmp_path).state_dict()
    from_model = inflate_autoencoder_kl(image_vae).state_dict()
    assert from_folder.keys() == from_model.keys()
    assert all(torch.equal(from_folder[k], from_model[k]) for k in from_model)
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        inflate_autoencoder_kl(tmp_path / "nowhere")
