"""``vidseg train``: the one training command (generated scenes or a folder of image/mask pairs)."""
from __future__ import annotations

import click

from .options import config_option, log_options, setup_logging


@click.command()
@config_option
@click.option("--model", "-m", default="deeplabv3plus", show_default=True, help="Architecture to train.")
@click.option("--backbone", default="mobilenetv2", show_default=True)
@click.option("--width-mult", type=click.FloatRange(0.01, 4.0), default=0.5, show_default=True, help="Channel width multiplier.")
@click.option("--input-size", type=click.IntRange(32, 4096), default=320, show_default=True, help="Training/inference longer side.")
@click.option("--arch", multiple=True, metavar="KEY=VALUE", help="Extra builder argument, recorded in the card (e.g. output_stride=8).")
@click.option("--steps", type=click.IntRange(1, 10**7), default=1500, show_default=True)
@click.option("--batch", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--crop", type=click.IntRange(32, 4096), default=None, help="Square crop size. [default: 0.6 x input size]")
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--aux/--no-aux", default=True, show_default=True, help="Train with the auxiliary head's loss (x0.4).")
@click.option("--data", default=None, help="A folder with images/ and masks/ of the same stems (default: generated scenes).")
@click.option("--num-classes", type=click.IntRange(1, 255), default=None, help="Classes in --data's masks (ids 0..N-1). [default: the generated scenes' 6]")
@click.option("--ignore-index", type=click.IntRange(0, 255), default=255, show_default=True, help="Mask value of pixels that count for nothing (--data).")
@click.option("--out", "-o", required=True, help="Checkpoint to write (vidseg format, card included).")
@click.option("--name", default=None, help="The card's name. [default: OUT's stem]")
@click.option("--resume", is_flag=True, help="Continue from OUT's saved training state.")
@click.option("--checkpoint-every", type=click.IntRange(1, 10**7), default=100, show_default=True, help="Steps between checkpoints.")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True, help="CPU threads.")
@click.option("--card-toml", default=None, help="Also write the card as TOML here, its weights path relative to it (the zoo's format).")
@click.option("--eval-seed", type=int, default=None, help="After training, report mIoU on the generated clip of this (held-out) seed.")
@log_options
def train(arch: tuple[str, ...], card_toml: str | None, eval_seed: int | None, verbose: int, quiet: bool, **kw) -> None:
    """Train a model from the registry on generated scenes or a folder of image/mask pairs."""
    import os
    from dataclasses import replace
    from pathlib import Path

    from ..config import parse_arch
    from ..errors import InputError
    from ..train import train as run_training
    from ..zoo import ModelCard

    setup_logging("train", verbose, quiet)
    try:
        result = run_training(progress=not quiet, **kw, **dict(parse_arch(arch)))
    except ValueError as e:
        raise InputError(str(e)) from None
    click.echo(
        f"{result['out']}: {result['step']} steps, loss {result['loss']:.4f}, {result['wall_s']:.0f} s, sha256 {result['sha256']}"
        f" — use it with: vidseg run --weights {result['out']}"
    )
    card = ModelCard.from_dict(result["card"])
    if card_toml:
        path = Path(card_toml)
        weights = os.path.relpath(Path(result["out"]).resolve(), path.resolve().parent)
        path.write_text(replace(card, weights=weights, sha256=result["sha256"]).to_toml())
        click.echo(f"wrote {path}")
    if eval_seed is not None:
        _report_eval(card, result["out"], eval_seed, kw["threads"])


def _report_eval(card, weights: str, seed: int, threads: int) -> None:
    import torch

    from ..evaluate import format_table
    from ..train import evaluate
    from ..zoo import build_from_card, read_checkpoint

    torch.set_num_threads(threads)
    net = build_from_card(card, read_checkpoint(weights)["state_dict"])
    ev = evaluate(net, card, seed=seed)
    click.echo(f"held-out clip seed {seed}, {ev['frames']} frames: mIoU {ev['miou']:.4f}")
    click.echo(format_table(ev["per_class"], card.class_names))
