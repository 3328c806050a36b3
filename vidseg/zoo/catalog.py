"""The shipped model zoo: cards (TOML) and their weights, found by name."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .card import ModelCard

#: Zoo models tried, in order, for the bundled demo clip.
DEMO_MODELS = ("deeplabv3plus-demo", "ccnet-demo")


def zoo_dirs() -> list[Path]:
    """Where cards live: the installed copy, then the repository's ``models/``."""
    here = Path(__file__).resolve().parent.parent
    return [d for d in (here / "_zoo", here.parent / "models") if d.is_dir()]


def read_card_file(path: Path) -> ModelCard:
    import tomllib

    with open(path, "rb") as fh:
        return ModelCard.from_dict(tomllib.load(fh))


@lru_cache(maxsize=1)
def zoo_cards() -> dict[str, tuple[ModelCard, Path]]:
    """Cards shipped in the zoo, by name, with the folder they came from."""
    out: dict[str, tuple[ModelCard, Path]] = {}
    for d in zoo_dirs():
        for p in sorted(d.glob("*.toml")):
            card = read_card_file(p)
            out.setdefault(card.name, (card, d))
    return out


def demo_model() -> str | None:
    """The default model for the demo clip: the project's own trained weights when shipped."""
    cards = zoo_cards()
    return next((m for m in DEMO_MODELS if m in cards), None)
