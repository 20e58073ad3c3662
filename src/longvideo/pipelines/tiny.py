"""A tiny randomly initialised `VideoPipeline` that runs on a CPU in milliseconds: for tests, examples and
benchmarks of the pipeline machinery (its videos are noise). Nothing is downloaded: the text encoder is a
2-layer T5 encoder over a word-level tokenizer of the shapes world's vocabulary, built here.
"""

from __future__ import annotations

import torch

from longvideo.diffusion import DiffusionConfig
from longvideo.models.dit import build_dit, dit_preset
from longvideo.models.text import TextEncoder, TextEncoderConfig
from longvideo.models.vae.model import CausalVAE, vae_preset
from longvideo.pipelines.video import PipelineDefaults, VideoPipeline

TEXT_DIM = 32


def shapes_vocabulary() -> list[str]:
    """Every word a shapes-world caption can use (DESIGN.md §4)."""
    from longvideo.data.shapes import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES

    words = ["a", "an", "and", "on", "background", *BACKGROUNDS, *COLORS, *SHAPES, *SIZES]
    words += [w for m in MOTIONS for w in m.split()]
    return list(dict.fromkeys(words))


def tiny_text_encoder(max_length: int = 16, dim: int = TEXT_DIM, layers: int = 2) -> TextEncoder:
    """A T5 encoder (`layers` layers of width `dim`, random weights from torch's global RNG) with a
    lower-casing WordLevel tokenizer of the shapes vocabulary ("</s>" appended). The bundled shapes model
    uses one (dim 64) frozen, as the seeds freeze T5: distinct random token states are all a DiT needs to
    tell the world's words apart."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(shapes_vocabulary())], trainers.WordLevelTrainer(
        special_tokens=["<pad>", "</s>", "<unk>"]))  # fmt: skip
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    cfg = transformers.T5Config(
        vocab_size=len(tokenizer), d_model=dim, d_kv=16, d_ff=2 * dim, num_layers=layers, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return TextEncoder(transformers.T5EncoderModel(cfg), tokenizer, TextEncoderConfig(max_length=max_length))


def tiny_pipeline(
    *, dit: str = "tiny-full3d", cond: bool = True, seed: int = 0, perturb: float = 0.02
) -> VideoPipeline:
    """VAE preset `tiny`, a tiny DiT preset (with [latents | mask] conditioning channels unless
    cond=False), the tiny T5; rectified flow, Euler, 9 frames of 32x32 by default.

    A fresh DiT starts with zero output and zero conditioning weights (init_weights); `perturb` adds
    N(0, perturb^2) to every DiT weight so every input reaches the output. The global RNG is left alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = CausalVAE(vae_preset("tiny"))
        c = vae.cfg.latent_channels
        cfg = dit_preset(dit)
        cfg.in_channels, cfg.cond_channels, cfg.text_dim = c, (c + 1 if cond else 0), TEXT_DIM
        transformer = build_dit(cfg, device="cpu")
        with torch.no_grad():
            for p in transformer.parameters():
                p.add_(torch.randn_like(p) * perturb)
        text_encoder = tiny_text_encoder()
    diffusion = DiffusionConfig(objective="flow", schedule="flow")
    defaults = PipelineDefaults(frames=9, height=32, width=32, steps=4, guidance=3.0, sampler="euler")
    return VideoPipeline(vae, transformer, text_encoder, diffusion, defaults)
