"""A non-editable install must contain every subpackage (setup.cfg lists them by hand)."""
from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_cfg_lists_every_subpackage():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "vidseg").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert on_disk - listed == set(), f"add to setup.cfg [options] packages: {sorted(on_disk - listed)}"
    assert "vidseg._zoo" in listed and (ROOT / "models").is_dir()
