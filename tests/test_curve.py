"""CURVE encryption and authentication for stages joined over tcp."""
import re
import shutil
import time
import subprocess
import sys


from helpers import TINY, free_endpoint, make_clip, probe, read_barcode, vidseg


def test_curve_pipeline_admits_known_keys_and_refuses_others(tmp_path):
    keys = tmp_path / "keys"
    r = vidseg("keys", str(keys))
    assert r.returncode == 0, r.stderr
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(keys / "client.key", allowed / "client.key")
    clip = make_clip(tmp_path / "c.mp4", frames=8, audio=False)
    ep = free_endpoint()
    base = [sys.executable, "-m", "vidseg"]
    client = ["--curve-secret", str(keys / "client.key_secret"), "--curve-server", str(keys / "server.key")]
    # An intruder without keys connects first: it must never be admitted, and it is told why at once (it used to
    # wait silently past its 60 s connect timeout). It is refused before the real peers start, while the source
    # is surely up (a loaded machine may take longer to load its model than the run lasts).
    intruder = subprocess.Popen(base + ["worker", "--connect", ep, *TINY, "--connect-timeout", "60"], stderr=subprocess.PIPE, text=True)
    src = subprocess.Popen(base + ["source", "--source", str(clip), "--bind", ep, "--curve-secret", str(keys / "server.key_secret"),
                                   "--curve-clients", str(allowed), "--connect-timeout", "120"], stderr=subprocess.PIPE, text=True)
    sink = worker = None
    try:
        try:
            rc = intruder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            intruder.kill()
            raise AssertionError(f"the intruder kept waiting past its connect timeout:\n{intruder.communicate()[1]}") from None
        assert rc == 3
        assert "uses CURVE encryption; give this stage --curve-secret" in intruder.stderr.read()
        sink = subprocess.Popen(base + ["sink", "--connect", ep, "--output", str(tmp_path / "o.mp4"), "--alpha", "0.3", *client],
                                stderr=subprocess.PIPE, text=True)
        worker = subprocess.Popen(base + ["worker", "--connect", ep, *TINY, *client], stderr=subprocess.PIPE, text=True)
        for p in (src, sink, worker):
            assert p.wait(timeout=120) == 0, p.stderr.read()
        src_log = src.stderr.read()
        assert src_log.count("worker") and src_log.count("connected (pid") == 1  # only the keyed worker joined
        # The source said so too. It counts refused handshakes: the intruder may retry its handshake (libzmq
        # reconnects within 100 ms) before it hears why and gives up, so once or a few times, never zero.
        refused = re.search(r"(\d+) peer\(s\) refused", src_log)
        assert "refused a peer (a client" in src_log and refused and int(refused.group(1)) >= 1, src_log
        assert [read_barcode(f) for f in probe(tmp_path / "o.mp4")["frames"]] == list(range(8))
    finally:
        for p in (src, sink, worker, intruder):
            if p is not None:
                p.kill()
                p.wait(timeout=10)


def test_bad_curve_key_file_is_one_line_error(tmp_path):
    r = vidseg("worker", "--connect", "tcp://127.0.0.1:1", "--curve-secret", str(tmp_path / "nope"), "--curve-server", str(tmp_path / "nope"), *TINY)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot read CURVE key file" in r.stderr and "vidseg keys" in r.stderr


# -- keys on disk, and what the source says about whom it admits (issue #10) ----------------------------------------
import os  # noqa: E402
import stat  # noqa: E402


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_keys_writes_secret_keys_readable_by_their_owner_only(tmp_path):
    keys = tmp_path / "keys"
    old = os.umask(0o022)  # a usual umask: the secret keys came out 0644
    try:
        r = vidseg("keys", str(keys))
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert _mode(keys / "server.key_secret") == 0o600 and _mode(keys / "client.key_secret") == 0o600
    assert _mode(keys / "server.key") == 0o644  # public keys are meant to be shared


def test_a_secret_key_others_can_read_is_refused_unless_accepted_with_a_warning(tmp_path, clip):
    keys = tmp_path / "keys"
    assert vidseg("keys", str(keys)).returncode == 0
    secret = keys / "server.key_secret"
    os.chmod(secret, 0o644)
    ep = free_endpoint()
    r = vidseg("source", "--source", str(clip), "--bind", ep, "--curve-secret", str(secret), "--connect-timeout", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"CURVE secret key {secret} can be read by every user (mode 0644); run 'chmod 600 {secret}'" in r.stderr
    assert "--curve-insecure-key" in r.stderr
    r = vidseg("source", "--source", str(clip), "--bind", ep, "--curve-secret", str(secret), "--curve-insecure-key",
               "--curve-clients", str(keys), "--connect-timeout", "1")
    assert r.returncode == 3, r.stderr  # it ran (then nobody connected)
    assert "can be read by every user (mode 0644); using it because of --curve-insecure-key" in r.stderr


def test_curve_without_admitted_clients_warns_that_any_key_pair_gets_in(tmp_path, clip):
    keys = tmp_path / "keys"
    assert vidseg("keys", str(keys)).returncode == 0
    ep = free_endpoint()
    r = vidseg("source", "--source", str(clip), "--bind", ep, "--curve-secret", str(keys / "server.key_secret"), "--connect-timeout", "1")
    assert r.returncode == 3
    assert "--curve-secret without --curve-clients: traffic is encrypted, but a client with any key pair is admitted" in r.stderr
    assert "anyone who can reach" not in r.stderr  # CURVE is an admission, the plain-tcp warning does not apply


def test_a_client_with_an_unknown_key_is_told_at_once_and_the_source_logs_it(tmp_path, clip):
    """It waited past its connect timeout with no message; the source said nothing about it."""
    keys, other = tmp_path / "keys", tmp_path / "other"
    assert vidseg("keys", str(keys)).returncode == 0 and vidseg("keys", str(other)).returncode == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(keys / "client.key", allowed / "client.key")
    ep = free_endpoint()
    base = [sys.executable, "-m", "vidseg"]
    log = tmp_path / "source.log"
    with open(log, "w") as fh:
        src = subprocess.Popen(base + ["source", "--source", str(clip), "--bind", ep, "--curve-secret", str(keys / "server.key_secret"),
                                       "--curve-clients", str(allowed), "--connect-timeout", "60"], stderr=fh, text=True)
    try:
        w = vidseg("worker", "--connect", ep, *TINY, "--curve-secret", str(other / "client.key_secret"),
                   "--curve-server", str(keys / "server.key"), "--connect-timeout", "60", timeout=60)
        assert w.returncode == 3 and "Traceback" not in w.stderr
        assert f"the source at {ep} refused this stage's CURVE key; copy this stage's public key" in w.stderr
        deadline = time.monotonic() + 30  # the source logs it on its next loop pass (a guard, not a target)
        while "refused a peer" not in log.read_text() and time.monotonic() < deadline and src.poll() is None:
            time.sleep(0.05)
    finally:
        src.terminate()
        src.wait(timeout=30)
    src_log = log.read_text()
    assert re.search(r"refused a peer \(a client at 127\.0\.0\.1 with key \S+\.\.\. is not in --curve-clients\)", src_log), src_log
