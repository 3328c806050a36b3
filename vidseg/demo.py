"""The bundled demo clip: generated scenes shipped with the package."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError

DEMO_CLIP = Path(__file__).resolve().parent / "data" / "demo.mp4"


def demo_clip() -> Path:
    """Path of the bundled demo clip."""
    if not DEMO_CLIP.is_file():
        raise InputError(f"the bundled demo clip {DEMO_CLIP} is missing; reinstall vidseg")
    return DEMO_CLIP
