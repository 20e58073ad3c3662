#!/bin/sh
# Reproduces the bundled shapes model (src/longvideo/assets/shapes) on a CPU, from nothing:
# VAE stages 1-3, then the DiT on cached latents, then the pipeline folder goes into the package.
set -e
longvideo train configs/shapes_vae.yaml            # VAE stage 1: L1 + MSE + KL, 9-frame clips + images
longvideo train configs/shapes_vae_stage2.yaml     # stage 2: decode the posterior mean
longvideo train configs/shapes_vae_stage3.yaml     # stage 3: decoder only, 17-frame clips (encoder frozen)
longvideo eval recon --model runs/shapes_vae_stage3/export --num 32 --frames 33 --json
longvideo train configs/shapes_dit.yaml            # DiT stage 1: caches latents of 6144 videos, then trains
longvideo train configs/shapes_dit_stage2.yaml     # DiT stage 2: from stage 1's EMA, fresh warmup + cosine
longvideo train configs/shapes_dit_stage3.yaml     # stage 3: more text-to-video samples (stops at 4000)
longvideo train configs/shapes_dit_stage4.yaml     # stage 4: training / sampling times shifted (shift 3)
rm -rf src/longvideo/assets/shapes && cp -r runs/shapes_dit_stage4/export src/longvideo/assets/shapes
python benchmarks/eval_shapes_model.py --model shapes --num 40 --threads 2 --json
longvideo train configs/shapes_extend.yaml         # ExVideo post-tuning: a 129-frame window (issue #6)
python benchmarks/eval_long_window.py --tuned runs/shapes_extend/export --frames 129 --num 12
