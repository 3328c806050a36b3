"""``vidseg models``, ``vidseg weights import`` and ``vidseg keys``: the zoo, public checkpoints, CURVE keys."""
from __future__ import annotations

import click

#: Public checkpoint formats (vidseg.convert.FORMATS), listed here so --help needs no torch.
FORMAT_CHOICES = ("auto", "ccnet-official", "mmseg", "vainf", "bubbliiiing", "torchvision", "jfzhang95", "smp")


@click.command()
def models() -> None:
    """List the models, their backbones and parameter counts, and the zoo's cards."""
    from ..nets.registry import CLASSES_FOR_PARAMS, list_models
    from ..zoo import zoo_cards

    click.echo(f"{'model':<16} {'backbone':<16} {f'params ({CLASSES_FOR_PARAMS} cls)':>16}  notes")
    for spec in list_models():
        for bb in spec.backbones:
            note = "default" if bb == spec.default_backbone else ""
            click.echo(f"{spec.name:<16} {bb:<16} {spec.params[bb] / 1e6:>14.2f} M  {note}")
    cards = zoo_cards()
    if cards:
        click.echo("\nzoo (use --model NAME):")
        for name, (card, _) in sorted(cards.items()):
            click.echo(f"  {name:<28} {card.architecture}/{card.backbone}, {card.num_classes} classes — {card.description}")


@click.group()
def weights() -> None:
    """Import public checkpoints (official CCNet, mmseg CCNet, VainF, bubbliiiing, jfzhang95 and
    segmentation_models_pytorch DeepLabV3+, torchvision DeepLabV3) into vidseg's format."""


@weights.command("import")
@click.argument("src")
@click.option("--output", "-o", "dst", required=True, help="vidseg checkpoint to write (card included).")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default="auto", show_default=True,
              help="The checkpoint's source; auto recognises it from its keys.")
@click.option("--num-classes", type=click.IntRange(1, 256), default=None,
              help="Classes you expect; an error if the checkpoint has another count.")
@click.option("--align-corners/--no-align-corners", default=None,
              help="Override the source's upsampling default (e.g. mmseg 769x769 configs: --align-corners).")
@click.option("--output-stride", type=click.Choice(["8", "16"]), default=None,
              help="DeepLabV3+ sources: the stride the checkpoint was trained at. [default: 16]")
@click.option("--keep-aux", is_flag=True, help="Keep the auxiliary (DSN) head, for fine-tuning.")
def import_command(src: str, dst: str, fmt: str, num_classes: int | None, align_corners: bool | None,
                   output_stride: str | None, keep_aux: bool) -> None:
    """Convert public checkpoint SRC into a vidseg checkpoint and print its card."""
    from ..weights import card_summary, import_checkpoint

    card = import_checkpoint(src, dst, fmt, num_classes=num_classes, aux=keep_aux, align_corners=align_corners,
                             output_stride=int(output_stride) if output_stride else None)
    click.echo(card_summary(card))


@click.command()
@click.argument("folder")
def keys(folder: str) -> None:
    """Create CURVE key pairs in FOLDER: server.key(_secret) for the source, client.key(_secret) for workers/sinks.

    Secret keys are readable by their owner only (0600), from the moment they exist.
    """
    import os
    from pathlib import Path

    import zmq.auth

    from ..errors import InputError

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    if any(d.glob("*.key*")):
        raise InputError(f"{folder} already holds keys; choose an empty folder (keys are never overwritten)")
    old = os.umask(0o077)  # created private: no moment in which another user could read a secret
    try:
        for name in ("server", "client"):
            public, _ = zmq.auth.create_certificates(str(d), name)
            os.chmod(public, 0o644)  # a public key is meant to be copied around
    finally:
        os.umask(old)
    click.echo(f"{d}/server.key_secret  -> vidseg source --curve-secret")
    click.echo(f"{d}/server.key         -> workers and sinks: --curve-server")
    click.echo(f"{d}/client.key_secret  -> workers and sinks: --curve-secret")
    click.echo(f"{d}/client.key         -> put in the source's --curve-clients folder to admit them")
