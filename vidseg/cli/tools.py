"""``vidseg models``, ``vidseg weights import`` and ``vidseg keys``: the zoo, public checkpoints, CURVE keys."""
from __future__ import annotations

import click

from ..convert import FORMATS  # metadata only: importing it loads no torch


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
@click.option("--format", "fmt", type=click.Choice(("auto",) + FORMATS), default="auto", show_default=True,
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
    from ..convert import card_summary, import_checkpoint

    card = import_checkpoint(src, dst, fmt, num_classes=num_classes, aux=keep_aux, align_corners=align_corners,
                             output_stride=int(output_stride) if output_stride else None)
    click.echo(card_summary(card))


@click.command()
@click.argument("model_or_checkpoint")
@click.option("--output", "-o", "dst", required=True, help="The .onnx file to write (the model card travels as metadata).")
@click.option("--backbone", default=None, help="Backbone of a registry model. [default: the model's]")
@click.option("--num-classes", type=click.IntRange(1, 256), default=None, help="Classes of a registry model. [default: 19]")
@click.option("--width-mult", type=click.FloatRange(0.01, 4.0), default=None, hidden=True)
@click.option("--arch", multiple=True, metavar="KEY=VALUE", help="Extra builder argument (e.g. output_stride=8).")
@click.option("--opset", type=click.IntRange(17, 23), default=None, help="ONNX opset. [default: 18]")
@click.option("--dynamic", default="batch,height,width", show_default=True,
              help="Axes left free, comma-separated (batch, height, width); the others are fixed by --input-size/--batch.")
@click.option("--input-size", type=click.IntRange(8, 8192), default=None,
              help="The fixed input as HEIGHTxWIDTH or one side (square) when height/width are not dynamic. [default: 64x96 sample]")
@click.option("--batch", type=click.IntRange(1, 1024), default=1, show_default=True, help="The fixed batch when batch is not dynamic.")
@click.option("--logits", is_flag=True, help="Also output the logits (slide inference, flip averaging and letterbox need them).")
@click.option("-v", "--verbose", count=True, help="More logging.")
def export(model_or_checkpoint: str, dst: str, opset: int | None, dynamic: str, input_size: int | None, batch: int,
           logits: bool, verbose: int, **kw) -> None:
    """Export a registry model, zoo model or checkpoint (vidseg's or a public one) to ONNX, ending with the argmax."""
    from pathlib import Path

    from ..config import ModelConfig, parse_arch
    from ..errors import InputError
    from ..export import DEFAULT_OPSET, export_onnx
    from ..zoo import build_from_card, resolve_card
    from .options import setup_logging

    setup_logging("export", verbose, False)
    _require_onnx()
    out = Path(dst)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"output {dst} must end in .onnx")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist; create it first")
    src = Path(model_or_checkpoint)
    if src.exists() and out.exists() and out.resolve() == src.resolve():
        raise InputError("output and input are the same file; give another -o path")
    as_file = src.is_file()
    cfg = ModelConfig(model=None if as_file else model_or_checkpoint, weights=str(src) if as_file else None,
                      backbone=kw["backbone"], num_classes=kw["num_classes"], width_mult=kw["width_mult"],
                      arch=parse_arch(kw["arch"]), device="cpu")
    card, state = resolve_card(cfg)
    model = build_from_card(card, state)
    axes = tuple(a.strip() for a in dynamic.split(",") if a.strip())
    side = input_size or 0
    size = (side, side) if side else (64, 96)
    export_onnx(model, card, out, opset=opset or DEFAULT_OPSET, dynamic=axes, sample_size=size, batch=batch, logits=logits)
    click.echo(f"{out}: {card.name} ({card.architecture}/{card.backbone}, {card.num_classes} classes), opset "
               f"{opset or DEFAULT_OPSET}, dynamic {','.join(axes) or 'none'}, outputs labels{' + logits' if logits else ''}")


def _require_onnx() -> None:
    from ..errors import InputError

    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise InputError(f"vidseg export needs the {module} package; install it with: pip install 'vidseg[onnx]'") from None


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
