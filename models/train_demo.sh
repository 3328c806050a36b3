#!/usr/bin/env bash
# The recipe that produced the shipped demo weights (CPU, 2 cores). Seeds: training scenes come from
# vidseg.train.TRAIN_SEEDS (1,000,000-1,999,999); the demo clip (20261121) and the held-out
# evaluation clip (4242) are never trained on.
set -euo pipefail
cd "$(dirname "$0")/.."
vidseg train --model ccnet --backbone mobilenetv2 --width-mult 0.5 --input-size 320 --arch output_stride=8 \
    --steps 1500 --batch 8 --lr 5e-3 --seed 1 --out models/ccnet-demo.pt --name ccnet-demo \
    --card-toml models/ccnet-demo.toml --eval-seed 4242
vidseg train --model deeplabv3plus --backbone mobilenetv2 --width-mult 0.5 --input-size 320 \
    --steps 1200 --batch 8 --lr 5e-3 --seed 2 --out models/deeplabv3plus-demo.pt --name deeplabv3plus-demo \
    --card-toml models/deeplabv3plus-demo.toml --eval-seed 4242
