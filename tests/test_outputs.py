"""Output planning: every rule about where outputs go is checked once, before any work."""
from __future__ import annotations

import pytest

from conftest import TINY, make_clip, vidseg
from vidseg.config import OutputConfig
from vidseg.errors import InputError
from vidseg.outputs import plan_outputs


def test_nothing_to_write_is_refused():
    with pytest.raises(InputError, match="nothing to write"):
        plan_outputs(OutputConfig())


@pytest.mark.parametrize("template, needle", [("o-{0}.mp4", "{0}"), ("o-{foo}.mp4", "{foo}"), ("o-{name.mp4", "not a valid template")])
def test_bad_templates_are_one_line_errors(template, needle):
    with pytest.raises(InputError, match="template") as e:
        plan_outputs(OutputConfig(output=(template,)), ["a.mp4", "b.mp4"])
    assert needle in str(e.value)


def test_two_streams_to_one_file_and_output_over_an_input_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = tmp_path / "x" / "in.mp4", tmp_path / "y" / "in.mp4"
    a.write_bytes(b"0")
    b.write_bytes(b"0")
    with pytest.raises(InputError, match="would both be written to"):
        plan_outputs(OutputConfig(output=(str(tmp_path / "out-{name}.mp4"),)), [str(a), str(b)])
    plan_outputs(OutputConfig(output=(str(tmp_path / "out-{stream}.mp4"),)), [str(a), str(b)])  # distinct: fine
    with pytest.raises(InputError, match="is one of the inputs"):
        plan_outputs(OutputConfig(output=(str(a),)), [str(a)])


def test_counts_must_match_the_sources(tmp_path):
    with pytest.raises(InputError, match="2 sources but 3 --output"):
        plan_outputs(OutputConfig(output=tuple(str(tmp_path / f"{i}.mp4") for i in range(3))), ["a", "b"])
    with pytest.raises(InputError, match="several sources need one --output each"):
        plan_outputs(OutputConfig(output=(str(tmp_path / "one.mp4"),)), ["a", "b"])


def test_run_refuses_an_output_over_its_source_before_starting(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", frames=4, audio=False)
    before = clip.read_bytes()
    r = vidseg("run", "--source", str(clip), "--output", str(clip), *TINY)
    assert r.returncode == 2 and "is one of the inputs" in r.stderr and "Traceback" not in r.stderr
    assert clip.read_bytes() == before
