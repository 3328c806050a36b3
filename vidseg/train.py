"""Train light segmentation models on generated scenes (or a folder of image/mask pairs).

The demo models shipped in ``models/`` come from :func:`train` (recipe:
``models/train_demo.sh``).  Images reach the network exactly the way the
worker's :class:`vidseg.predictor.Segmenter` feeds it: BGR uint8 frame ->
resize (bilinear) to the inference size -> RGB -> ``(x/255 - mean) / std``
with ImageNet statistics.  On top of that, training adds augmentation (random
scale, crop, flips, colour jitter, JPEG artefacts, blur) so the model holds up
on unseen scenes and on H.264-decoded frames.

Seeds (disjoint by construction):

* training scenes: :data:`TRAIN_SEEDS` = ``[1_000_000, 2_000_000)``;
* the bundled demo clip: ``20261121``;
* held-out evaluation (tests, ``models/README.md``): seeds below ``1_000_000``
  (:data:`EVAL_SEED` = ``4242`` by default).

The command line is ``vidseg train`` (:mod:`vidseg.cli.train`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from .errors import InputError
from .scenes import CLASS_NAMES, NUM_CLASSES, PALETTE, Scene, SceneConfig
from .zoo import ModelCard, Preprocess, load_state_strict, save_checkpoint

__all__ = ["train", "evaluate", "TRAIN_SEEDS", "EVAL_SEED", "DEMO_SEED", "state_path"]

#: Seeds of the generated training scenes.
TRAIN_SEEDS = range(1_000_000, 2_000_000)
#: Seed of the bundled demo clip (never trained on).
DEMO_SEED = 20261121
#: Default held-out evaluation seed (any seed below 1_000_000 is unseen in training).
EVAL_SEED = 4242

# Generated scenes are rendered at the demo clip's size, then scaled so that the
# longer side is ``input_size`` (times the random augmentation scale): exactly
# what the worker does to a 320x240 frame.
_SCENE_W, _SCENE_H = 320, 240
#: The generated domain the demo models learn: class-banded hues, no look-alike distractors
#: (learnable by a tiny CPU model in minutes); the demo clip is drawn from it too.
SCENE_KNOBS = {"class_hues": True, "distractors": 0}
_IGNORE = 255
_IMAGE_EXT = (".png", ".jpg", ".jpeg")
_STATE_VERSION = 1


def state_path(out: str | os.PathLike) -> Path:
    """The training-state file that goes with checkpoint ``out``: ``<out>.state.pt``."""
    return Path(f"{os.fspath(out)}.state.pt")


# --------------------------------------------------------------------------- data


class _FolderData:
    """``folder/images/*.{png,jpg,jpeg}`` paired by stem with ``folder/masks/*.png``.

    Everything is checked once up front (pairs, readability, sizes, class ids)
    so a bad dataset fails before training starts, with the file to fix.
    """

    def __init__(self, folder: str | os.PathLike, num_classes: int, ignore_index: int = _IGNORE) -> None:
        if not 0 <= ignore_index <= 255:
            raise InputError(f"ignore index {ignore_index} must be a mask value, 0..255")
        self.ignore_index = int(ignore_index)
        root = Path(folder)
        img_dir, mask_dir = root / "images", root / "masks"
        if not root.is_dir():
            raise InputError(f"training data folder {root} does not exist; give a folder with images/ and masks/")
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise InputError(f"training data folder {root} needs two subfolders, images/ and masks/")
        images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXT)
        if not images:
            raise InputError(f"no images in {img_dir}; put *.png or *.jpg files there (masks/ holds same-stem *.png)")
        stems: dict[str, Path] = {}
        for p in images:
            if p.stem in stems:
                raise InputError(f"two images share the stem {p.stem!r} ({stems[p.stem].name}, {p.name}); rename one")
            stems[p.stem] = p
        missing = [p.name for p in images if not (mask_dir / f"{p.stem}.png").is_file()]
        if missing:
            raise InputError(
                f"{len(missing)} image(s) in {img_dir} have no mask: e.g. {missing[0]} needs masks/{Path(missing[0]).stem}.png"
            )
        self.pairs: list[tuple[Path, Path]] = [(p, mask_dir / f"{p.stem}.png") for p in images]
        self.num_classes = num_classes
        for ip, mp in self.pairs:
            img, mask = self._read(ip, mp)
            if img.shape[:2] != mask.shape:
                raise InputError(
                    f"image {ip.name} is {img.shape[1]}x{img.shape[0]} but its mask {mp.name} is "
                    f"{mask.shape[1]}x{mask.shape[0]}; masks must have their image's size"
                )
            ids = mask[mask != self.ignore_index]
            top = int(ids.max()) if ids.size else 0
            if top >= num_classes:
                raise InputError(
                    f"mask {mp} holds class id {top} but the model has {num_classes} classes (ids 0..{num_classes - 1}); "
                    f"fix the mask, pass --num-classes, or --ignore-index {top} if {top} marks pixels to ignore"
                )

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, ip: Path, mp: Path) -> tuple[np.ndarray, np.ndarray]:
        """Image (BGR) and mask, the dataset's ignore value mapped to the loss's (255)."""
        img, mask = self._read(ip, mp)
        if self.ignore_index != _IGNORE:
            # Every other value is a class id < num_classes <= 255 (checked up front), so 255 is free.
            mask = np.where(mask == self.ignore_index, _IGNORE, mask).astype(np.uint8)
        return img, mask

    @staticmethod
    def _read(ip: Path, mp: Path) -> tuple[np.ndarray, np.ndarray]:
        img = cv2.imread(str(ip), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"cannot read image {ip}; is it a valid PNG/JPEG?")
        mask = cv2.imread(str(mp), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise InputError(f"cannot read mask {mp}; is it a valid PNG?")
        if mask.ndim != 2 or mask.dtype.kind not in "ui":
            raise InputError(
                f"mask {mp} must be a single-channel image of integer class ids, got shape {mask.shape} {mask.dtype}"
            )
        return img, mask

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.load(*self.pairs[int(rng.integers(len(self.pairs)))])


def _scene_samples(rng: np.random.Generator, n: int, per_scene: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (frame, mask) pairs from fresh training scenes (seeds in TRAIN_SEEDS)."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    scene: Scene | None = None
    for i in range(n):
        if i % per_scene == 0:
            cfg = SceneConfig(
                width=_SCENE_W,
                height=_SCENE_H,
                seed=int(TRAIN_SEEDS.start + rng.integers(len(TRAIN_SEEDS))),
                num_objects=int(rng.integers(5, 12)),
                **SCENE_KNOBS,
            )
            scene = Scene(cfg)
        assert scene is not None
        sf = scene.render(int(rng.integers(0, 96)))
        out.append((sf.frame, sf.mask))
    return out


def _augment(
    img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, input_size: int, crop: int, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Scale to the inference size (times a random factor), crop, flip, jitter. BGR uint8 in and out.

    With ``augment=False`` only the resize to the inference scale and the crop remain.
    """
    H, W = img.shape[:2]
    s = input_size / max(H, W)
    if augment:
        s *= math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
    h, w = max(8, int(round(H * s))), max(8, int(round(W * s)))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    if h < crop or w < crop:  # pad: image with grey, mask with "ignore"
        ph, pw = max(0, crop - h), max(0, crop - w)
        img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(124, 116, 104))
        mask = cv2.copyMakeBorder(mask, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=_IGNORE)
        h, w = img.shape[:2]
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    img = img[y : y + crop, x : x + crop]
    mask = mask[y : y + crop, x : x + crop]
    if not augment:
        return np.ascontiguousarray(img), np.ascontiguousarray(mask)
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        img, mask = img[::-1], mask[::-1]
    # Colour jitter: contrast, brightness, per-channel gain (white balance).
    f = img.astype(np.float32)
    contrast = rng.uniform(0.7, 1.3)
    gain = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    bright = rng.uniform(-30, 30)
    f = ((f - 128.0) * np.float32(contrast) + np.float32(128.0 + bright)) * gain
    if rng.random() < 0.3:
        f += rng.normal(0.0, rng.uniform(1.0, 5.0), f.shape).astype(np.float32)
    img = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    if rng.random() < 0.6:  # stands in for H.264: blocking, ringing, 4:2:0 chroma
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img), np.ascontiguousarray(mask)


def _to_tensor_batch(imgs: Sequence[np.ndarray], pre: Preprocess) -> np.ndarray:
    """BGR uint8 images -> (B, 3, H, W) float32, the same arithmetic as ``Segmenter._run_cpu``."""
    a, b = pre.affine()
    h, w = imgs[0].shape[:2]
    batch = np.empty((len(imgs), h, w, 3), np.float32)
    for i, img in enumerate(imgs):
        if pre.channel_order == "RGB":
            img = img[..., ::-1]
        np.multiply(img, a, out=batch[i], casting="unsafe")
        batch[i] += b
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- model helpers


def _build(model: str, backbone: str, num_classes: int, arch: dict[str, Any], aux: bool):
    from .nets import build_model

    kw = dict(arch)
    if aux:
        kw["aux"] = True
    try:
        return build_model(model, backbone=backbone, num_classes=num_classes, align_corners=False, **kw)
    except ValueError as e:
        raise InputError(str(e)) from None


def _export(net, card: ModelCard):
    """The inference model of ``card`` (no aux head) holding ``net``'s trained weights."""
    export = _build(card.architecture, card.backbone, card.num_classes, card.arch, aux=False)
    own = export.state_dict()
    state = {k: v for k, v in net.state_dict().items() if k in own}
    load_state_strict(export, state, what=f"{card.architecture}/{card.backbone}")
    return export.eval()


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up, then cosine decay to 1% of ``lr``."""
    warm = max(1, min(100, steps // 10))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class _Progress:
    """One ``\\r`` line on stderr: step, loss, it/s, ETA."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, step: int, loss: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.25 and step < self.total:
            return
        self.last = now
        done = step - self.start
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_s = f"{int(eta // 60)}:{int(eta % 60):02d}" if math.isfinite(eta) else "?"
        width = len(str(self.total))
        sys.stderr.write(f"\rstep {step:>{width}}/{self.total}  loss {loss:.4f}  {rate:.2f} it/s  ETA {eta_s}  ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------- training


def train(
    *,
    model: str,
    backbone: str,
    width_mult: float,
    input_size: int,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    out: str,
    data: str | None = None,
    resume: bool = False,
    checkpoint_every: int = 100,
    progress: bool = True,
    crop: int | None = None,
    augment: bool = True,
    aux: bool = True,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    name: str | None = None,
    weight_decay: float = 1e-4,
    threads: int | None = 2,
    callback: Callable[[dict], None] | None = None,
    **arch_kwargs: Any,
) -> dict:
    """Train ``model``/``backbone`` and write a vidseg checkpoint to ``out``.

    Data: generated scenes (seeds in :data:`TRAIN_SEEDS`) when ``data`` is None,
    else a folder with ``images/*.png|jpg`` and same-stem ``masks/*.png`` class-id
    masks (``ignore_index``, default 255, marks pixels that count for nothing).  Each step draws ``batch`` random ``crop`` x ``crop`` crops (default
    ``0.6 * input_size``) at the inference scale times a random factor, then
    flips, colour jitter, noise, blur and JPEG artefacts (``augment=False``:
    resize and crop only).  AdamW,
    linear warm-up then cosine decay of ``lr``; cross-entropy, plus 0.4 x the
    auxiliary head's loss when ``aux``.  Every ``checkpoint_every`` steps (and at
    the end, or on Ctrl-C) ``out`` is rewritten atomically, with the optimizer,
    step and RNG state in :func:`state_path` ``(out)``; ``resume=True`` continues
    from there.  ``callback(info)`` runs after each step.  Extra keyword
    arguments go to the model builder and into the card's ``arch``.

    Returns a summary: out, state, sha256, step, loss (mean of the last 20
    steps), losses (this call's per-step losses), wall_s, resumed_from, card.
    """
    import torch
    import torch.nn.functional as F

    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    if input_size < 32 or lr <= 0 or width_mult <= 0 or checkpoint_every < 1:
        raise ValueError("need input_size >= 32, lr > 0, width_mult > 0 and checkpoint_every >= 1")
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class names")
        num_classes = len(class_names)
    num_classes = int(num_classes or NUM_CLASSES)
    crop = int(crop or max(32, int(round(input_size * 0.6 / 8)) * 8))
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    st_p = state_path(out_p)

    folder = _FolderData(data, num_classes, ignore_index) if data is not None else None
    if folder is None and class_names is None and num_classes == NUM_CLASSES:
        names, palette = CLASS_NAMES, tuple(tuple(int(v) for v in c) for c in PALETTE.tolist())
    else:
        names, palette = tuple(class_names or ()), ()
    arch = {"width_mult": float(width_mult), **arch_kwargs}
    source = f"the folder {data}" if folder is not None else f"generated scenes (seeds {TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1})"
    card = ModelCard(
        name=name or out_p.stem,
        architecture=model,
        backbone=backbone,
        num_classes=num_classes,
        class_names=names,
        palette=palette,
        preprocess=Preprocess(),
        align_corners=False,
        input_size=int(input_size),
        arch=arch,
        description=(
            f"{model}/{backbone} width_mult={width_mult:g}, trained from scratch on {source}: "
            f"{steps} steps x batch {batch} of {crop}px crops, AdamW lr {lr:g} cosine, seed {seed} (vidseg.train)"
        ),
    )
    run_config = {
        "model": model, "backbone": backbone, "width_mult": float(width_mult), "input_size": int(input_size),
        "batch": int(batch), "crop": crop, "augment": bool(augment), "aux": bool(aux), "num_classes": num_classes,
        "data": None if data is None else str(Path(data).resolve()), "arch": json.dumps(arch, sort_keys=True),
    }

    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        net = _build(model, backbone, num_classes, arch, aux)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        rng = np.random.default_rng([int(seed), 0x7A1])
        start = 0
        if resume and st_p.is_file():
            start = _load_state(st_p, run_config, net, opt, rng)
        resumed_from = start

        def save(step: int) -> str:
            sha = save_checkpoint(out_p, _export(net, card), card)
            _atomic_torch_save(
                {
                    "vidseg_train_state": _STATE_VERSION,
                    "step": step,
                    "config": run_config,
                    "model": {k: v.detach().clone() for k, v in net.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "numpy_rng": json.dumps(rng.bit_generator.state),
                    "torch_rng": torch.get_rng_state(),
                },
                st_p,
            )
            return sha

        t0 = time.perf_counter()
        losses: list[float] = []
        bar = _Progress(steps, start, progress)
        step = start
        sha = None
        net.train()
        try:
            while step < steps:
                raw = (
                    [folder.sample(rng) for _ in range(batch)] if folder is not None else _scene_samples(rng, batch)
                )
                pairs = [_augment(i, m, rng, input_size=input_size, crop=crop, augment=augment) for i, m in raw]
                x = torch.from_numpy(_to_tensor_batch([p[0] for p in pairs], card.preprocess))
                y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
                cur_lr = _lr_at(step, steps, lr)
                for g in opt.param_groups:
                    g["lr"] = cur_lr
                outp = net(x)
                if isinstance(outp, (tuple, list)):
                    loss = F.cross_entropy(outp[0], y, ignore_index=_IGNORE)
                    for extra in outp[1:]:
                        loss = loss + 0.4 * F.cross_entropy(extra, y, ignore_index=_IGNORE)
                else:
                    loss = F.cross_entropy(outp, y, ignore_index=_IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise FloatingPointError(f"loss became {lv} at step {step}; lower lr")
                losses.append(lv)
                bar.update(step, float(np.mean(losses[-20:])), force=step == steps)
                if step % checkpoint_every == 0 or step == steps:
                    sha = save(step)
                if callback is not None:
                    callback({"step": step, "steps": steps, "loss": lv, "lr": cur_lr})
        except KeyboardInterrupt:
            if step > resumed_from:
                save(step)
            bar.close()
            raise
        bar.close()
        if sha is None:  # resumed at or past the last step: checkpoint already final
            sha = save(step) if not out_p.is_file() else None
        from .zoo import sha256_file

        return {
            "out": str(out_p),
            "state": str(st_p),
            "sha256": sha or sha256_file(out_p),
            "step": step,
            "loss": float(np.mean(losses[-20:])) if losses else None,
            "losses": losses,
            "wall_s": time.perf_counter() - t0,
            "resumed_from": resumed_from,
            "card": card.to_dict(),
        }
    finally:
        torch.set_num_threads(prev_threads)


def _load_state(path: Path, run_config: dict, net, opt, rng: np.random.Generator) -> int:
    import torch

    try:
        st = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise InputError(f"training state {path} is unreadable ({type(e).__name__}); delete it to start over") from None
    if not isinstance(st, dict) or st.get("vidseg_train_state") != _STATE_VERSION:
        raise InputError(f"{path} is not a vidseg training-state file; delete it to start over")
    old = st["config"]
    # A key the state lacks was added to vidseg later; it held its default then.
    diff = [f"{k}: {old[k]!r} -> {v!r}" for k, v in run_config.items() if k in old and old[k] != v]
    if diff:
        raise InputError(f"cannot resume from {path}: the run's settings changed ({'; '.join(diff)}); use the same settings or drop resume")
    net.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    rng.bit_generator.state = json.loads(st["numpy_rng"])
    torch.set_rng_state(st["torch_rng"])
    return int(st["step"])


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model,
    card: ModelCard,
    *,
    seed: int = EVAL_SEED,
    num_frames: int = 24,
    width: int = 320,
    height: int = 240,
    batch: int = 4,
    workdir: str | os.PathLike | None = None,
) -> dict:
    """mIoU of ``model`` on a fresh generated clip, measured the way the worker runs.

    Writes scene ``seed`` with :func:`vidseg.scenes.write_scene` (H.264 MP4 +
    exact PNG masks), decodes it to BGR frames with PyAV, segments them with
    :class:`vidseg.predictor.Segmenter` on the CPU and compares with the
    masks.  Returns miou, per_class (NaN for absent classes), confusion, frames.
    """
    import av

    from .evaluate import confusion_matrix, iou_from_confusion
    from .media.decode import converter
    from .scenes import write_scene
    from .predictor import Segmenter

    if seed in TRAIN_SEEDS:
        raise ValueError(f"seed {seed} is a training seed; evaluate on a seed outside {TRAIN_SEEDS}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cfg = replace(SceneConfig(**SCENE_KNOBS), seed=int(seed), num_frames=int(num_frames), width=int(width), height=int(height))
        write_scene(cfg, Path(tmp) / "clip.mp4", Path(tmp) / "masks")
        with av.open(str(Path(tmp) / "clip.mp4")) as c:
            to_bgr = converter()
            frames = [to_bgr(f) for f in c.decode(c.streams.video[0])]
        masks = [cv2.imread(str(Path(tmp) / "masks" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) for i in range(len(frames))]
    seg = Segmenter(model, card, device="cpu")
    cm = np.zeros((card.num_classes, card.num_classes), np.int64)
    for i in range(0, len(frames), batch):
        preds = seg(frames[i : i + batch])
        cm += confusion_matrix(np.stack(preds), np.stack(masks[i : i + batch]), card.num_classes)
    miou, per_class = iou_from_confusion(cm)
    return {"miou": miou, "per_class": per_class, "confusion": cm, "frames": len(frames)}
