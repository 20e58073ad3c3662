#!/bin/sh
# Reproduces the bundled shapes VAE (src/longvideo/assets/shapes/vae) on a CPU: two stages.
set -e
longvideo train configs/shapes_vae.yaml
longvideo train configs/shapes_vae_stage2.yaml
longvideo eval recon --model shapes --num 32 --frames 33 --json
