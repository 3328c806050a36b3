"""Output planning: where each stream's video and masks go, checked once before any work.

``vidseg run``, ``vidseg sink`` and ``vidseg eval`` all call
:func:`plan_outputs`; the sink asks the plan for each stream's paths when the
stream is announced. Every rule about outputs (suffix, writable folder,
existing outputs refused unless ``--overwrite``, templates, one file per
stream, never over an input), what a failed write says (a full disk names the
path and the free space), and the record of temporary files a killed sink
leaves for ``vidseg run`` to remove, is here.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import OutputConfig
from .errors import InputError, StageError

#: The file (named by ``vidseg run`` in this variable) where a sink lists its temporary outputs as it opens them.
PARTIALS_ENV = "VIDSEG_PARTIALS"
TEMPLATE_FIELDS = ("stream", "name")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v")


def check_output_path(path: str, overwrite: bool = False) -> Path:
    """Fail early, with the fix, when video ``path`` cannot be written (or exists, without ``overwrite``)."""
    p = Path(path)
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"output {path} must end in .mp4 (H.264 MP4 is what vidseg writes)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory {parent} does not exist; create it first")
    if p.is_dir():
        raise InputError(f"output {path} is a directory; give a file name ending in .mp4")
    check_new_file(path, "--output", overwrite)
    _probe_writable(parent, p.name, "--output")
    return p


def check_json_path(path: str, overwrite: bool = False) -> Path:
    """The ``--json`` metadata file: in a writable folder, not a folder itself, new unless ``overwrite``."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"directory {parent} of --json {path} does not exist; create it first")
    if p.is_dir():
        raise InputError(f"--json {path} is a directory; give a file name such as frames.jsonl")
    check_new_file(path, "--json", overwrite)
    _probe_writable(parent, p.name, "--json file")
    return p


def check_new_file(path: str, flag: str, overwrite: bool) -> None:
    """The one policy for every output file (videos, reports): an existing one is refused unless ``overwrite``."""
    if os.path.lexists(path) and not overwrite:
        raise InputError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another name")


def check_masks_dir(path: str, overwrite: bool = False) -> Path:
    """The masks folder must be new or empty (or, with ``overwrite``, a folder to replace); its parent writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"masks folder {path} exists and is not a folder; choose another --masks")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise InputError(f"masks folder {path} already exists and is not empty; pass --overwrite to replace it, or choose a new --masks folder")
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

    def _for(self, outs: Sequence[str], check, stream: int, source: str, streams: int) -> str | None:
        path = path_for(outs, stream, source, streams)
        if path is not None and len(outs) == 1 and is_template(outs[0]):
            check(path, self.out.overwrite)
        if path is not None and source and not _is_url(source) and _identity(path) is not None \
                and _identity(path) == _identity(source):  # a sink started by hand learns its input only now
            raise InputError(f"output {path} is the input of stream {stream}; choose another output name")
        return path


def plan_outputs(out: OutputConfig, sources: Sequence[str] | None = None) -> OutputPlan:
    """Check every output rule that can be checked now; with ``sources`` known, all of them."""
    if not (out.output or out.masks or out.preview or out.json or out.serve):
        raise InputError("nothing to write, and no display here for a preview window: watch in a browser with --serve :8080 "
                         "(then open http://127.0.0.1:8080/), or give --output FILE.mp4, --masks DIR or --json FILE.jsonl")
    if out.json and sources is not None and _is_input(out.json, sources):  # said first: --overwrite must not help
        raise InputError(f"--json {out.json} is one of the inputs; choose another file name")
    if out.json:
        check_json_path(out.json, out.overwrite)
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
                check_output_path(o, out.overwrite)
        for m in out.masks:
            if not is_template(m):
                check_masks_dir(m, out.overwrite)
        return plan
    seen: dict[Path, int] = {}
    for i, src in enumerate(sources):
        for path, check in ((path_for(out.output, i, src, len(sources)), check_output_path),
                            (path_for(out.masks, i, src, len(sources)), check_masks_dir)):
            if path is None:
                continue
            key = Path(path).resolve()
            if key in seen:
                raise InputError(f"streams {seen[key]} and {i} would both be written to {path}; "
                                 "give one output per --source or a template with {stream}")
            seen[key] = i
            if _is_input(path, sources):
                raise InputError(f"output {path} is one of the inputs; choose another output name")
            check(path, out.overwrite)
    return plan


def _is_input(path: str, sources: Sequence[str]) -> bool:
    """Whether ``path`` names one of the input files (the same file under any name, or a link to it)."""
    inputs = {_identity(s) for s in sources} - {None}
    return _identity(path) in inputs or Path(path).resolve() in {Path(s).resolve() for s in sources if not _is_url(s)}


def output_error(path: str | os.PathLike, e: OSError) -> StageError:
    """A failed write as one line: a full disk names the path and the free space; the partial file is gone."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            free = _size(shutil.disk_usage(folder).free)
        except OSError:
            free = "unknown"
        return StageError(f"no space left to write {path} ({free} free in {folder}); the partial output was removed — "
                          "free some space or write elsewhere")
    return StageError(f"cannot write {path} ({getattr(e, 'strerror', None) or e}); the partial output was removed")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def record_partial(path: str | os.PathLike) -> None:
    """List a temporary output in the file ``vidseg run`` named (if any), so it can remove it after a kill -9."""
    record = os.environ.get(PARTIALS_ENV)
    if record:
        with open(record, "a") as fh:
            fh.write(f"{os.path.abspath(path)}\n")


def remove_partials(record: str) -> list[str]:
    """Remove every temporary output listed in ``record`` that still exists; returns what was removed."""
    removed = []
    with contextlib.suppress(OSError), open(record) as fh:
        for line in fh:
            p = Path(line.rstrip("\n"))
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
            else:
                continue
            removed.append(str(p))
    return removed


def _is_url(s: str) -> bool:
    return "://" in s


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of an existing file, so links and relative paths to an input are caught."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
