#!/bin/sh
# Reproduces the bundled shapes model (src/longvideo/assets/shapes) on a CPU, from nothing, with the chain of
# configs in configs/shapes/ (configs/shapes/NAME.yaml writes runs/shapes_NAME; each config's header says what
# it reads). The order: the first VAE (stages 1-3) and a DiT on its latents (stages 1-4) came first; the
# second VAE recipe then beat that VAE, the DiT was retrained on the second VAE's latents (a warm start learns
# the new latents far faster than a fresh model), then moved to 1x1 patches (warm start: same blocks, resized
# embedding and output layer), trained on (last with the loss weighted toward the objects), and the shipped
# DiT is that one ExVideo-post-tuned to a 129-frame window, under the second VAE's last decoder-only stage.
# What each stage measured: BENCHMARKS.md.
set -e
longvideo train configs/shapes/vae.yaml            # VAE 1, stage 1: L1 + MSE + KL, 9-frame clips + images
longvideo train configs/shapes/vae_stage2.yaml     # stage 2: decode the posterior mean
longvideo train configs/shapes/vae_stage3.yaml     # stage 3: decoder only (encoder frozen)
longvideo train configs/shapes/dit.yaml            # DiT stage 1: caches latents of 6144 videos, then trains
longvideo train configs/shapes/dit_stage2.yaml     # DiT stage 2: from stage 1's EMA, fresh warmup + cosine
longvideo train configs/shapes/dit_stage3.yaml     # stage 3: more text-to-video samples (stops at 4000)
longvideo train configs/shapes/dit_stage4.yaml     # stage 4: training / sampling times shifted (shift 3)
longvideo train configs/shapes/vae_v2.yaml         # VAE 2: Adam (0.9, 0.999) at 3e-4, posterior mean
longvideo train configs/shapes/vae_v2_stage2.yaml  # VAE 2, more steps (stops at 3000)
longvideo train configs/shapes/vae_v2_stage3.yaml  # VAE 2, decoder only (the encoder and latents unchanged)
longvideo eval recon --model runs/shapes_vae_v2_stage3/export --num 32 --frames 33 --judge --json
longvideo train configs/shapes/dit_v2.yaml         # the DiT of stage 4 on VAE 2's latents (new cache)
longvideo train configs/shapes/dit_v3.yaml         # 1x1 patches: 8x8 tokens per latent frame instead of 4x4
longvideo train configs/shapes/dit_v4.yaml         # more steps on twice the videos (bf16 autocast)
longvideo train configs/shapes/dit_v5.yaml         # more steps, the loss weighted toward the objects
longvideo train configs/shapes/extend_v5.yaml      # ExVideo post-tuning: a 129-frame window (issue #6)
longvideo train configs/shapes/vae_v2_stage4.yaml  # VAE 2, more decoder-only steps (latents unchanged)
python scripts/swap_vae.py runs/shapes_extend_v5/export runs/shapes_vae_v2_stage4/export runs/shapes_shipped
rm -rf src/longvideo/assets/shapes && cp -r runs/shapes_shipped src/longvideo/assets/shapes
python benchmarks/eval/eval_shapes_model.py --model shapes --num 40 --threads 2 --json
python benchmarks/eval/eval_long_window.py --tuned runs/shapes_shipped --base runs/shapes_dit_v5/export --frames 1025 --num 8 --modes tuned-chunked
