"""Output planning: where each stream's video and masks go, checked once before any work.

``vidseg run``, ``vidseg sink`` and ``vidseg eval`` all call
:func:`plan_outputs`; the sink asks the plan for each stream's paths when the
stream is announced. Every rule about outputs (suffix, writable folder, new
masks folder, templates, one file per stream, never over an input) is here.
"""
from __future__ import annotations

import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import OutputConfig
from .errors import InputError

TEMPLATE_FIELDS = ("stream", "name")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v")


def check_output_path(path: str) -> Path:
    """Fail early, with the fix, when video ``path`` cannot be written."""
    p = Path(path)
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"output {path} must end in .mp4 (H.264 MP4 is what vidseg writes)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory {parent} does not exist; create it first")
    if p.is_dir():
        raise InputError(f"output {path} is a directory; give a file name ending in .mp4")
    _probe_writable(parent, p.name, "--output")
    return p


def check_json_path(path: str) -> Path:
    """The ``--json`` metadata file: in a writable folder, not a folder itself."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"directory {parent} of --json {path} does not exist; create it first")
    if p.is_dir():
        raise InputError(f"--json {path} is a directory; give a file name such as frames.jsonl")
    _probe_writable(parent, p.name, "--json file")
    return p


def check_masks_dir(path: str) -> Path:
    """The masks folder must be new (or empty) and its parent writable."""
    p = Path(path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise InputError(f"masks folder {path} already exists and is not empty; choose a new --masks folder")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"directory {parent} does not exist; create it first")
    _probe_writable(parent, p.name, "--masks folder")
    return p


def _probe_writable(folder: Path, name: str, what: str) -> None:
    try:  # a real write probe: permission bits lie for root and read-only mounts
        fd, probe = tempfile.mkstemp(prefix=f".{name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError:
        raise InputError(f"directory {folder} is not writable; choose another {what}") from None


def check_template(template: str, flag: str) -> None:
    """A template may name only ``{stream}`` and ``{name}``; anything else is a one-line error."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise InputError(f"{flag} {template!r} is not a valid template ({e}); use {{name}} or {{stream}}") from None
    bad = [f for f in fields if f not in TEMPLATE_FIELDS]
    if bad:
        raise InputError(f"{flag} {template!r} names {{{bad[0]}}}; a template may use only {{name}} and {{stream}}")


def is_template(path: str) -> bool:
    return "{" in path


def path_for(outputs: Sequence[str], stream: int, source: str, streams: int) -> str | None:
    """Where stream ``stream`` goes: the i-th of several outputs, or one template with {stream}/{name}."""
    if not outputs:
        return None
    if len(outputs) > 1:
        return outputs[stream]
    template = outputs[0]
    if is_template(template):
        return template.format(stream=stream, name=Path(source).stem or f"stream{stream}")
    if streams > 1:
        raise InputError("several sources need one --output each, or a template such as out-{name}.mp4")
    return template


@dataclass(frozen=True)
class OutputPlan:
    """The checked outputs; ``video_for``/``masks_for`` name one stream's files.

    A path that comes from a template is checked when it is first named (the
    stream's source is known only then); the others were checked by :func:`plan_outputs`.
    """

    out: OutputConfig

    def video_for(self, stream: int, source: str, streams: int) -> str | None:
        return self._for(self.out.output, check_output_path, stream, source, streams)

    def masks_for(self, stream: int, source: str, streams: int) -> str | None:
        return self._for(self.out.masks, check_masks_dir, stream, source, streams)

    @staticmethod
    def _for(outs: Sequence[str], check, stream: int, source: str, streams: int) -> str | None:
        path = path_for(outs, stream, source, streams)
        if path is not None and len(outs) == 1 and is_template(outs[0]):
            check(path)
        return path


def plan_outputs(out: OutputConfig, sources: Sequence[str] | None = None) -> OutputPlan:
    """Check every output rule that can be checked now; with ``sources`` known, all of them."""
    if not (out.output or out.masks or out.preview or out.json or out.serve):
        raise InputError("nothing to write, and no display here for a preview window: watch in a browser with --serve :8080 "
                         "(then open http://127.0.0.1:8080/), or give --output FILE.mp4, --masks DIR or --json FILE.jsonl")
    if out.json:
        check_json_path(out.json)
    plan = OutputPlan(out)
    for outs, flag in ((out.output, "--output"), (out.masks, "--masks")):
        for o in outs:
            if is_template(o):
                check_template(o, flag)
        if sources is not None and outs and len(outs) not in (1, len(sources)):
            raise InputError(f"{len(sources)} sources but {len(outs)} {flag} values; give one per --source or a template like out-{{name}}.mp4")
    if sources is None:  # a sink started by hand: the streams are announced later
        for o in out.output:
            if not is_template(o):
                check_output_path(o)
        for m in out.masks:
            if not is_template(m):
                check_masks_dir(m)
        return plan
    inputs = {_identity(s) for s in sources} - {None}
    if out.json and (_identity(out.json) in inputs or Path(out.json).resolve() in {Path(s).resolve() for s in sources if not _is_url(s)}):
        raise InputError(f"--json {out.json} is one of the inputs; choose another file name")
    seen: dict[Path, int] = {}
    for i, src in enumerate(sources):
        for path, check in ((path_for(out.output, i, src, len(sources)), check_output_path),
                            (path_for(out.masks, i, src, len(sources)), check_masks_dir)):
            if path is None:
                continue
            check(path)
            key = Path(path).resolve()
            if key in seen:
                raise InputError(f"streams {seen[key]} and {i} would both be written to {path}; "
                                 "give one output per --source or a template with {stream}")
            seen[key] = i
            if _identity(path) in inputs or key in {Path(s).resolve() for s in sources if not _is_url(s)}:
                raise InputError(f"output {path} is one of the inputs; choose another output name")
    return plan


def _is_url(s: str) -> bool:
    return "://" in s


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of an existing file, so links and relative paths to an input are caught."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
