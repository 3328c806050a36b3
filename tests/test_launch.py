"""vidseg run's stage command lines are derived from the config dataclasses, and parse back to the same settings."""
from __future__ import annotations

import dataclasses

import pytest

from helpers import parse_stage_args
from vidseg.cli import cli
from vidseg.cli.options import config_of
from vidseg.config import AccessConfig, BatchConfig, FlowConfig, ModelConfig, OutputConfig, SourceConfig, TelemetryConfig
from vidseg.errors import InputError
from vidseg.launch import TOKEN_ENV, RunPlan, stage_commands, stage_env, stage_telemetry, to_args

PLAN = RunPlan(
    source=SourceConfig(sources=("a.mp4", "b.mp4"), mode="live", fps=12.5),
    model=ModelConfig(model="ccnet", backbone="resnet50", num_classes=7, input_size=96, device="cpu", precision="bf16",
                      width_mult=0.25, arch=(("output_stride", 16), ("multi_grid", (1, 2, 4)), ("stem", "mmseg")),
                      inference="slide", crop_size=(48, 64), crop_stride=(32, 40), flip=True),
    batch=BatchConfig(batch=3, max_wait=0.02),
    output=OutputConfig(output=("o-{name}.mp4",), masks=("m-{stream}",), alpha=0.2, crf=30, preset="ultrafast", preview=False,
                        overlay="fill+contour", legend=True, classes=("car", "7"), json="meta.jsonl", serve="0.0.0.0:8080",
                        progress=False),
    flow=FlowConfig(window=9, credits=5, heartbeat=0.25, worker_timeout=1.5, peer_timeout=7.0, connect_timeout=8.0,
                    no_worker_grace=2.0),
    workers=2,
    devices=("cpu", "cpu"),
    telemetry=TelemetryConfig(metrics="127.0.0.1:9100"),
)


@pytest.mark.parametrize("role, configs", [
    ("source", (SourceConfig, FlowConfig, TelemetryConfig)),
    ("sink", (OutputConfig, FlowConfig, TelemetryConfig)),
    ("worker", (ModelConfig, BatchConfig, FlowConfig, TelemetryConfig)),
])
def test_each_stage_rebuilds_the_same_settings_from_its_command_line(role, configs):
    stages = [s for s in stage_commands(PLAN, "ipc:///tmp/x/d") if s.role == role]
    assert stages and len(stages) == (2 if role == "worker" else 1)
    # run --metrics HOST:PORT: the source on PORT, the sink on PORT+1, worker i on PORT+2+i
    ports = {"source": ["127.0.0.1:9100"], "sink": ["127.0.0.1:9101"], "worker": ["127.0.0.1:9102", "127.0.0.1:9103"]}[role]
    for s, port in zip(stages, ports):
        kw = parse_stage_args(s.argv[s.argv.index("vidseg") + 1:])
        want = {SourceConfig: PLAN.source, OutputConfig: PLAN.output, ModelConfig: PLAN.model,
                BatchConfig: PLAN.batch, FlowConfig: PLAN.flow, TelemetryConfig: TelemetryConfig(metrics=port)}
        for cls in configs:
            assert config_of(cls, kw) == want[cls], cls.__name__


def test_metrics_ports_of_run_stay_in_range_and_off_means_off():
    assert stage_telemetry(TelemetryConfig(), 5) == TelemetryConfig()
    assert stage_telemetry(TelemetryConfig(metrics="[::1]:9000"), 3).metrics == "[::1]:9003"
    with pytest.raises(InputError, match="ports 65534..65537; choose a lower port"):
        stage_telemetry(TelemetryConfig(metrics="127.0.0.1:65534"), 3)
    plain = dataclasses.replace(PLAN, telemetry=TelemetryConfig())
    assert not any("--metrics" in s.argv for s in stage_commands(plain, "ipc:///tmp/x/d"))


def test_every_config_field_has_an_option_on_the_stage_that_takes_it():
    """A field added to a config dataclass without its flag would be silently dropped on the way to a stage."""
    takes = {"source": (SourceConfig, FlowConfig, AccessConfig, TelemetryConfig),
             "sink": (OutputConfig, FlowConfig, AccessConfig, TelemetryConfig),
             "worker": (ModelConfig, BatchConfig, FlowConfig, AccessConfig, TelemetryConfig)}
    for role, classes in takes.items():
        names = {p.name for p in cli.commands[role].params}
        for cls in classes:
            for f in dataclasses.fields(cls):
                assert f.name in names, f"vidseg {role} has no option for {cls.__name__}.{f.name}"


def test_to_args_leaves_unset_fields_to_the_stage_default():
    assert to_args(ModelConfig()) == ["--device", "auto", "--runtime", "torch"]
    # a (height, width) pair is one HxW value, as a user types it
    assert to_args(ModelConfig(crop_size=(512, 1024), flip=False))[2:6] == ["--crop-size", "512x1024", "--no-flip", "--runtime"]
    assert to_args(OutputConfig(output=("a.mp4", "b.mp4"), preview=True))[:4] == ["--output", "a.mp4", "--output", "b.mp4"]
    assert "--preview" in to_args(OutputConfig(preview=True)) and "--no-preview" in to_args(OutputConfig())


def test_a_recipe_gives_the_sliding_window_as_a_list_or_text(tmp_path):
    rec = tmp_path / "slide.toml"
    rec.write_text('inference = "slide"\ncrop_size = [96, 128]\ncrop_stride = "64x96"\nflip = true\n')
    cfg = config_of(ModelConfig, parse_stage_args(["worker", "--config", str(rec)]))
    assert (cfg.inference, cfg.crop_size, cfg.crop_stride, cfg.flip) == ("slide", (96, 128), (64, 96), True)
    assert config_of(ModelConfig, parse_stage_args(["worker", "--config", str(rec), "--crop-size", "769"])).crop_size == (769, 769)


def test_run_admits_its_own_stages_with_a_fresh_token_kept_off_their_command_lines(tmp_path):
    """Command lines are readable by every user of the machine (/proc/PID/cmdline); the environment is not."""
    a, b = stage_env(str(tmp_path)), stage_env(str(tmp_path))
    assert len(a[TOKEN_ENV]) >= 32 and a[TOKEN_ENV] != b[TOKEN_ENV]
    for s in stage_commands(PLAN, "ipc:///tmp/x/d"):
        assert a[TOKEN_ENV] not in " ".join(s.argv) and "--token" not in s.argv
    token = next(p for p in cli.commands["source"].params if p.name == "token")
    assert token.envvar == TOKEN_ENV  # the stages read it from there


def test_each_gpu_worker_sees_only_its_own_gpu(monkeypatch):
    """cuda:N becomes CUDA_VISIBLE_DEVICES=N and cuda:0 inside the worker: one context, on its own GPU."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    plan = dataclasses.replace(PLAN, workers=3, devices=("cuda:1", "cuda:0", "cpu"))
    workers = [s for s in stage_commands(plan, "ipc:///tmp/x/d") if s.role == "worker"]
    got = [(s.argv[s.argv.index("--device") + 1], s.env.get("CUDA_VISIBLE_DEVICES")) for s in workers]
    assert got == [("cuda:0", "1"), ("cuda:0", "0"), ("cpu", None)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # already narrowed by the user: N indexes that list
    workers = [s for s in stage_commands(plan, "ipc:///tmp/x/d") if s.role == "worker"]
    assert [s.env.get("CUDA_VISIBLE_DEVICES") for s in workers] == ["6", "4", None]
