"""The ``cloudckpt`` command: every subcommand's output and exit status, against real servers.

Most invocations go through click's CliRunner (in process); the exit
statuses and the environment-variable configuration are also checked with
real subprocesses (the console script and ``python -m cloudckpt.tools.cli``).
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import servers
from click.testing import CliRunner

import cloudckpt
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.layout import ownership
from cloudckpt.storage import add_global_hook, open_storage
from cloudckpt.tools import cli

SMALL = cloudckpt.StoreOptions(pack_threshold=1024, chunk_bytes=32 * 1024)
COMMANDS = ["ls", "inspect", "verify", "cp", "rm", "gc"]


def run(*args, env=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], env=env, catch_exceptions=False)


def script(*args, env=None, module=False, stderr=subprocess.PIPE):
    """Run the console script (or ``python -m cloudckpt.tools.cli``) in a real process,
    importing the cloudckpt under test (not another installed copy)."""
    exe = shutil.which("cloudckpt")
    argv = [sys.executable, "-m", "cloudckpt.tools.cli"] if module or exe is None else [exe]
    here = os.path.dirname(os.path.dirname(os.path.abspath(cloudckpt.__file__)))
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (here, full_env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [*argv, *map(str, args)], stdout=subprocess.PIPE, stderr=stderr, text=True, env=full_env, timeout=120
    )


def opts(options: dict, flag: str = "--option") -> list[str]:
    out = []
    for k, v in options.items():
        out += [flag, f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return out


@pytest.fixture
def s3loc(s3_server, s3_bucket):
    return f"s3://{s3_bucket}/cli-{uuid.uuid4().hex[:10]}", servers.s3_storage_options(s3_server.endpoint_url)


@pytest.fixture
def gcsloc(gcs_server, gcs_bucket):
    return f"gs://{gcs_bucket}/cli-{uuid.uuid4().hex[:10]}", servers.gcs_storage_options(gcs_server.endpoint_url)


def _model(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {"w": rng.standard_normal((40, 100)).astype(np.float32), "b": np.full(3, float(i))}


def _managed(root: str, options: dict | None, saves: int = 3):
    ckpt = cloudckpt.Checkpoint(model=_model(0), step=0)
    mgr = cloudckpt.CheckpointManager(ckpt, root, max_to_keep=2, storage_options=options, options=SMALL)
    for i in range(1, saves + 1):
        ckpt.model["w"][:] = i
        ckpt.step = i
        mgr.save()
    return mgr


# -- help ---------------------------------------------------------------------------


def test_every_subcommand_has_help():
    top = run("--help")
    assert top.exit_code == 0
    for c in [*COMMANDS, "demo"]:
        assert c in top.output
    # the exit statuses and storage options: once, in the command's own help
    assert "Exit statuses" in top.output and "5  refused" in top.output and "STORAGE_EMULATOR_HOST" in top.output
    for c in [*COMMANDS, "demo"]:
        r = run(c, "--help")
        assert r.exit_code == 0, c
        assert "Usage: main" in r.output or "Usage: cloudckpt" in r.output
        assert "5  refused" not in r.output and "STORAGE_EMULATOR_HOST" not in r.output, c
        assert "see `cloudckpt --help`" in " ".join(r.output.split()), c
    assert "--src-option" in run("cp", "--help").output
    assert "--yes" in run("gc", "--help").output and "--all" in run("gc", "--help").output
    for c in ("verify", "cp", "gc", "rm"):
        assert "--quiet" in run(c, "--help").output, c


def test_demo_help_is_a_click_command_with_help_for_every_option():
    demo = run("demo", "--help")
    assert demo.exit_code == 0
    assert demo.output.startswith("Usage: main demo [OPTIONS]") or demo.output.startswith("Usage: cloudckpt demo")
    helps = {}
    for line in demo.output.splitlines():
        words = line.split()
        if words and words[0].startswith("--"):
            helps[words[0]] = " ".join(words[2:] if len(words) > 1 and words[1].isupper() else words[1:])
    assert set(helps) >= {"--dir", "--steps", "--every", "--kill-at", "--delay"}
    for option, text in helps.items():
        assert len(text) > 10, (option, text)
    assert "SIGKILL" in demo.output and "[default: 33]" in demo.output and "[default: 60" in demo.output
    # python -m cloudckpt.demo keeps its own (argparse) options, each with help
    p = subprocess.run(
        [sys.executable, "-m", "cloudckpt.demo", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--kill-at STEP" in p.stdout and "(default 60)" in p.stdout and "--worker" not in p.stdout


def test_demo_passes_options_and_exit_status(monkeypatch):
    import cloudckpt.demo

    seen = []
    monkeypatch.setattr(cloudckpt.demo, "run", lambda directory, **kw: seen.append((directory, kw)) or 7)
    r = CliRunner().invoke(cli.main, ["demo", "--dir", "/tmp/x", "--steps", "3", "--kill-at", "2"])
    assert r.exit_code == 7
    assert seen == [("/tmp/x", {"steps": 3, "every": 5, "kill_at": 2, "delay": 0.02})]
    assert run("demo", "--steps", "0").exit_code == 2  # click checks the range


# -- ls / inspect / verify ----------------------------------------------------------------


def test_ls_inspect_verify_on_gcs_configured_from_the_environment(gcsloc, gcs_server):
    root, so = gcsloc
    _managed(root, so)  # ckpt-2, ckpt-3 remain (max_to_keep=2); epoch 1
    s = open_storage(root, so)
    s.write("ckpt-4/data-e1-00000000000000aa/zarr.json", b"{}")  # current epoch: maybe still running
    s.write("ckpt-9/data-e0-00000000000000bb/zarr.json", b"{}")  # older epoch: certainly dead
    env = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint_url}  # no --option needed

    r = run("ls", root, env=env)
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.output.splitlines() if ln.startswith("ckpt-")}
    assert sorted(lines) == ["ckpt-2", "ckpt-3", "ckpt-4", "ckpt-9"]
    assert "committed" in lines["ckpt-2"] and "*" not in lines["ckpt-2"]
    assert "committed" in lines["ckpt-3"] and lines["ckpt-3"].split()[7] == "*"
    assert "partial" in lines["ckpt-4"] and "orphaned" in lines["ckpt-9"]
    assert f"latest: {root}/ckpt-3" in r.output

    j = json.loads(run("ls", root, "--json", env=env).output)
    assert j["latest"] == f"{root}/ckpt-3" and j["owner_epoch"] == 1
    states = {e["name"]: (e["state"], e["latest"]) for e in j["entries"]}
    assert states == {
        "ckpt-2": ("committed", False),
        "ckpt-3": ("committed", True),
        "ckpt-4": ("partial", False),
        "ckpt-9": ("orphaned", False),
    }
    assert j["state_file"]["model_checkpoint_path"] == "ckpt-3"
    e3 = next(e for e in j["entries"] if e["name"] == "ckpt-3")
    assert e3["size"] > 40 * 100 * 4 and e3["created_utc"].endswith("Z")

    r = run("inspect", f"{root}/ckpt-3", env=env)
    assert r.exit_code == 0, r.output
    m = json.loads(s.read("ckpt-3/manifest.json"))
    assert f"zarr group      {root}/ckpt-3/{m['data']}" in r.output
    rows = {ln.split()[0]: ln.split() for ln in r.output.splitlines() if ln.startswith(("model/", "step"))}
    assert rows["model/w"][1:4] == ["<f4", "(40,", "100)"] and rows["model/w"][4] == "15.6"
    assert rows["model/b"][1] == "<f8" and "packed" in " ".join(rows["model/b"])
    assert rows["step"][-1] == "3"
    ji = json.loads(run("inspect", f"{root}/ckpt-3", "--json", env=env).output)
    assert ji["zarr_group"] == f"{root}/ckpt-3/{m['data']}" and ji["checkpoint_number"] == 3
    leaves = {"/".join(map(str, x["path"])): x for x in ji["leaves"]}
    assert leaves["model/w"]["shape"] == [40, 100] and leaves["model/w"]["nbytes"] == 16000
    assert leaves["step"] == {"path": ["step"], "kind": "json", "type": "int", "value": 3}
    # a directory: its latest checkpoint
    rd = run("inspect", root, "--json", env=env)
    assert rd.exit_code == 0 and json.loads(rd.stdout)["url"] == f"{root}/ckpt-3"

    ok = run("verify", root, env=env)
    assert ok.exit_code == 0 and "OK: 2 checkpoints verified" in ok.output
    assert "ckpt-4 has no manifest" in ok.output
    assert run("verify", root, "--strict", env=env).exit_code == 1  # the partial save is a warning
    bad_key = next(o["key"] for o in m["objects"] if "/c/" in o["key"])
    raw = bytearray(s.read(f"ckpt-3/{bad_key}"))
    raw[7] ^= 0x04
    s.write(f"ckpt-3/{bad_key}", bytes(raw))
    bad = run("verify", root, env=env)
    assert bad.exit_code == 1
    assert f"damaged: {root}/ckpt-3/{bad_key}: crc32c mismatch" in bad.output
    assert "FAILED: 1 damaged object in 1 of 2 checkpoints" in bad.output
    jb = json.loads(run("verify", f"{root}/ckpt-3", "--json", env=env).stdout)
    assert jb["ok"] is False and [d["url"] for d in jb["damaged"]] == [f"{root}/ckpt-3/{bad_key}"]


def test_inspected_zarr_group_opens_with_zarr_alone(tmp_path):
    import zarr

    w = np.arange(6000, dtype=np.float32).reshape(60, 100)
    url = cloudckpt.save(str(tmp_path / "ckpt-1"), {"w": w, "tiny": np.ones(2)}, options=SMALL)
    info = json.loads(run("inspect", url, "--json").output)
    group = zarr.open_group(info["zarr_group"], mode="r")
    assert np.array_equal(group["w"][...], w)


def test_ls_inspect_errors(tmp_path):
    url = cloudckpt.save(str(tmp_path / "run" / "ckpt-1"), {"w": np.ones(2)})
    r = run("ls", url)
    assert r.exit_code == 2 and "use `cloudckpt inspect`" in r.output
    assert run("ls", tmp_path / "nothing").exit_code == 3
    assert run("inspect", tmp_path / "nothing").exit_code == 3
    assert run("verify", tmp_path / "nothing").exit_code == 3
    assert run("ls", "nosuchscheme://x/y").exit_code == 2
    r = run("ls", str(tmp_path), "--option", "oops")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


# -- cp -----------------------------------------------------------------------------


def test_cp_s3_to_gcs_with_options_and_gcs_to_s3_with_environment(s3loc, gcsloc, s3_server, gcs_server):
    s3root, so = s3loc
    gsroot, go = gcsloc
    state = {"model": _model(5), "step": 5, "note": "x"}
    src = cloudckpt.save(f"{s3root}/single/ckpt-5", state, storage_options=so, options=SMALL)

    r = run("cp", src, f"{gsroot}/single/ckpt-5", *opts(so, "--src-option"), *opts(go, "--dst-option"))
    assert r.exit_code == 0, r.output
    assert f"committed {gsroot}/single/ckpt-5" in r.stdout
    assert "(100%)" in r.stderr and "cp: " in r.stderr  # plain progress lines: not a terminal
    got = cloudckpt.load(f"{gsroot}/single/ckpt-5", storage_options=go)
    assert got["model"]["w"].tobytes() == state["model"]["w"].tobytes() and got["step"] == 5
    again = run("cp", src, f"{gsroot}/single/ckpt-5", *opts(so, "--src-option"), *opts(go, "--dst-option"), "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == [f"{gsroot}/single/ckpt-5"]

    # the other way, a whole managed directory, in a real process configured only by the environment
    mgr = _managed(f"{gsroot}/run", go, saves=4)
    env = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint_url, "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    p = script("cp", f"{gsroot}/run", f"{s3root}/run", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("committed ") == 2 and f"state file {s3root}/run/checkpoint" in p.stdout
    ckpt = cloudckpt.Checkpoint(model=_model(9), step=0)
    dm = cloudckpt.CheckpointManager(ckpt, f"{s3root}/run", max_to_keep=2, storage_options=so)
    assert [u.rsplit("/", 1)[1] for u in dm.checkpoints] == [u.rsplit("/", 1)[1] for u in mgr.checkpoints]
    assert dm.restore_or_initialize() == f"{s3root}/run/ckpt-4"
    assert ckpt.step == 4 and (ckpt.model["w"] == 4).all()
    # the copied directory verifies clean, from the command line too
    assert script("verify", f"{s3root}/run", env=env, module=True).returncode == 0


def _on_a_terminal(*args):
    """Run the command with stderr on a pseudo-terminal: (exit status, what the terminal got)."""
    master, slave = pty.openpty()
    try:
        p = script(*args, stderr=slave)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return p.returncode, b"".join(chunks).decode(errors="replace")


def test_cp_draws_a_progress_bar_on_a_terminal(tmp_path):
    src = cloudckpt.save(str(tmp_path / "a" / "ckpt-1"), {"w": np.ones(300_000)}, options=SMALL)
    status, tty = _on_a_terminal("cp", src, tmp_path / "b" / "ckpt-1")
    assert status == 0
    assert "100%" in tty and "B/s" in tty and "|" in tty  # tqdm: bar, bytes, rate
    assert "cp: " in tty and "ETA" not in tty  # not the plain log line


def test_verify_draws_a_progress_bar_on_a_terminal(tmp_path):
    src = cloudckpt.save(str(tmp_path / "a" / "ckpt-1"), {"w": np.ones(300_000)}, options=SMALL)
    status, tty = _on_a_terminal("verify", src)
    assert status == 0
    assert "verify: 100%" in tty and "B/s" in tty and "|" in tty and "2.29M/2.29M" in tty
    assert "ETA" not in tty  # not the plain lines
    status, quiet = _on_a_terminal("verify", src, "--quiet")
    assert status == 0 and "verify:" not in quiet


def test_cp_errors(tmp_path):
    a = cloudckpt.save(str(tmp_path / "a" / "ckpt-1"), {"w": np.ones(3)})
    b = cloudckpt.save(str(tmp_path / "b" / "ckpt-1"), {"w": np.zeros(3)})
    r = run("cp", a, b)
    assert r.exit_code == 5 and "never overwritten" in r.output
    assert run("cp", tmp_path / "nothing", tmp_path / "c").exit_code == 3
    m = json.loads(open(os.path.join(a, MANIFEST_KEY)).read())
    key = m["objects"][-1]["key"]
    with open(os.path.join(a, key), "r+b") as f:
        f.write(b"\x99")
    r = run("cp", a, tmp_path / "c" / "ckpt-1")
    assert r.exit_code == 1 and os.path.join(a, key) in r.output


# -- rm -----------------------------------------------------------------------------


def test_rm(tmp_path):
    root = str(tmp_path / "run")
    _managed(root, None, saves=3)  # ckpt-2, ckpt-3
    r = run("rm", f"{root}/ckpt-3")
    assert r.exit_code == 5 and "latest checkpoint" in r.output and "--yes" in r.output
    assert os.path.exists(f"{root}/ckpt-3/manifest.json")
    r = run("rm", f"{root}/ckpt-2")
    assert r.exit_code == 0 and f"removed {root}/ckpt-2 (committed)" in r.output
    assert not os.path.exists(f"{root}/ckpt-2")
    state = open(f"{root}/checkpoint").read()
    assert "ckpt-2" not in state and 'model_checkpoint_path: "ckpt-3"' in state
    r = run("rm", f"{root}/ckpt-3", "--yes", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["state_file_updated"] is True
    assert not os.path.exists(f"{root}/ckpt-3") and not os.path.exists(f"{root}/checkpoint")
    assert cloudckpt.latest_checkpoint(root) is None
    # a damaged checkpoint can be removed; a directory cannot
    bad = cloudckpt.save(str(tmp_path / "x" / "ckpt-1"), {"w": np.ones(2)})
    with open(os.path.join(bad, MANIFEST_KEY), "w") as f:
        f.write("{broken")
    r = run("rm", bad)
    assert r.exit_code == 0 and "(corrupt)" in r.output and not os.path.exists(bad)
    r = run("rm", root)
    assert r.exit_code == 3
    r = run("rm", tmp_path / "x")
    assert r.exit_code == 3


# -- gc -----------------------------------------------------------------------------


def test_gc_on_s3_with_incomplete_multipart_uploads(s3loc):
    root, so = s3loc
    ckpt = cloudckpt.Checkpoint(w=np.ones(4))
    cloudckpt.CheckpointManager(ckpt, root, max_to_keep=3, storage_options=so).save()  # epoch 1
    cloudckpt.CheckpointManager(ckpt, root, max_to_keep=3, storage_options=so).restore_or_initialize()  # epoch 2
    s = open_storage(root, so)
    assert ownership.current_epoch(s) == 2
    s.write("ckpt-1/data-e1-00000000000000cc/zarr.json", b"{}")  # a failed attempt in a committed checkpoint
    s.write("ckpt-7/data-e1-00000000000000aa/zarr.json", b"{}")  # crashed under the old owner
    s.write("ckpt-8/data-e2-00000000000000bb/zarr.json", b"{}")  # the current owner's: maybe running
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **so)
    bucket, prefix = root[len("s3://") :].split("/", 1)
    up = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"{prefix}/ckpt-9/data-e2-x/c/0")["UploadId"]
    other = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"elsewhere-{prefix}/big")["UploadId"]

    # the storage verbs
    listed = s.list_incomplete_uploads()
    assert [(u.key, u.upload_id) for u in listed] == [("ckpt-9/data-e2-x/c/0", up)]
    assert listed[0].initiated is not None
    assert open_storage("memory://gc-none").list_incomplete_uploads() == []
    assert open_storage(str(os.getcwd())).list_incomplete_uploads() == []

    r = run("gc", root, *opts(so))
    assert r.exit_code == 0, r.output
    table = {ln.split()[0]: ln for ln in r.output.splitlines()}
    assert set(table) >= {"KIND", "orphaned-data", "partial-save", "incomplete-upload"}
    assert f"{root}/ckpt-9/data-e2-x/c/0" in table["incomplete-upload"] and " abort " in table["incomplete-upload"]
    dry = json.loads(run("gc", root, "--json", *opts(so)).output)
    assert dry["dry_run"] is True and dry["removed"] == []
    items = {g["url"]: (g["kind"], g["collect"]) for g in dry["items"]}
    assert items == {
        f"{root}/ckpt-1/data-e1-00000000000000cc": ("orphaned-data", True),
        f"{root}/ckpt-7": ("partial-save", True),
        f"{root}/ckpt-8": ("partial-save", False),
        f"{root}/ckpt-9/data-e2-x/c/0": ("incomplete-upload", True),
    }
    assert "keep (--all)" in r.output
    assert "dry run: 3 items" in r.output
    assert s.exists("ckpt-7/data-e1-00000000000000aa/zarr.json") and len(s.list_incomplete_uploads()) == 1

    r = run("gc", root, "--yes", *opts(so))
    assert r.exit_code == 0 and "removed 3 items" in r.output
    assert s.list_incomplete_uploads() == []
    assert s.list_all("ckpt-7") == {} and s.list_all("ckpt-1/data-e1-00000000000000cc") == {}
    assert s.exists("ckpt-8/data-e2-00000000000000bb/zarr.json")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [other]  # outside the directory: untouched
    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=f"elsewhere-{prefix}/big", UploadId=other)

    j = json.loads(run("gc", root, "--yes", "--all", "--json", *opts(so)).stdout)
    assert j["removed"] == [f"{root}/ckpt-8"] and j["dry_run"] is False
    assert s.list_all("ckpt-8") == {}
    assert run("gc", root, *opts(so)).output.startswith("no garbage")
    assert cloudckpt.load(f"{root}/ckpt-1", storage_options=so)["w"].tolist() == [1, 1, 1, 1]


# -- exit statuses and credentials --------------------------------------------------------


def _protocol_without_package() -> str | None:
    import fsspec

    for protocol in ("oci", "dropbox", "box", "webdav", "az"):
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError:
            return protocol
    return None


def test_exit_statuses_in_real_processes(tmp_path):
    root = str(tmp_path / "run")
    _managed(root, None, saves=2)
    m = json.loads(open(f"{root}/ckpt-2/{MANIFEST_KEY}").read())
    key = m["objects"][0]["key"]
    with open(f"{root}/ckpt-2/{key}", "r+b") as f:
        f.write(b"#")
    p = script("verify", root, module=True)
    assert p.returncode == 1 and f"{root}/ckpt-2/{key}" in p.stdout
    assert script("--help").returncode == 0
    p = script("ls", tmp_path / "none")
    assert p.returncode == 3 and p.stderr.startswith("cloudckpt: error: no checkpoints")
    assert script("ls", "--no-such-flag", root).returncode == 2
    missing = _protocol_without_package()
    if missing is not None:  # a URL whose backend package is not installed
        p = script("ls", f"{missing}://container/run")
        assert p.returncode == 4 and "not installed" in p.stderr
    assert script("rm", f"{root}/ckpt-2", module=True).returncode == 5


def test_credentials_never_in_output(s3loc):
    root, so = s3loc
    secret = "S3CR3T-" + uuid.uuid4().hex
    cloudckpt.save(f"{root}/ckpt-1", {"w": np.ones(2)}, storage_options=so)
    good = {**so, "secret": secret}  # moto takes any secret
    outputs = []
    for args in (["ls", root], ["inspect", f"{root}/ckpt-1"], ["verify", root], ["gc", root]):
        r = run("-vv", *args, *opts(good))
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
    r = run("cp", f"{root}/ckpt-1", f"{root}/ckpt-2", *opts(good), "--json")
    assert r.exit_code == 0
    outputs.append(r.output)
    # failures: an unknown option with a secret-looking name, an unreachable endpoint
    r = run("ls", root, *opts({**so, "bogus_password": secret}))
    assert r.exit_code == 2 and "unknown storage option 'bogus_password'" in r.output
    outputs.append(r.output)
    port = servers.free_port()
    dead = {
        **good,
        "endpoint_url": f"http://127.0.0.1:{port}",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    r = run("-v", "ls", root, *opts(dead))
    assert r.exit_code == 4 and "127.0.0.1" in r.output
    outputs.append(r.output)
    r = run("ls", root, "--option", f"{secret}")  # malformed: not echoed back
    assert r.exit_code == 2
    outputs.append(r.output)
    for out in outputs:
        assert secret not in out


def test_inspect_shows_tied_tensors(tmp_path):
    torch = pytest.importorskip("torch", reason="tied tensors come from torch")
    from click.testing import CliRunner

    from cloudckpt.tools.cli import main as cli_main

    lin = torch.nn.Linear(3, 3)
    url = cloudckpt.save(str(tmp_path / "c"), {"a": lin.weight, "b": lin.weight})
    result = CliRunner().invoke(cli_main, ["inspect", url])
    assert result.exit_code == 0, result.output
    assert "same tensor as a (tied)" in result.output
    result = CliRunner().invoke(cli_main, ["inspect", "--json", url])
    assert result.exit_code == 0, result.output
    assert '"alias"' in result.output


def test_inspect_lists_per_rank_values_by_rank(tmp_path):
    url = cloudckpt.save(str(tmp_path / "c"), {"rng": cloudckpt.PerRank({"x": np.ones(2), "n": 3}), "w": np.zeros(2)})
    result = run("inspect", url)
    assert result.exit_code == 0, result.output
    assert "rng/x [rank 0]" in result.output and "rng/_r0/x" in result.output
    assert "rng/n [rank 0]" in result.output and "json: 3" in result.output
    result = run("inspect", "--json", url)
    rows = json.loads(result.output)["leaves"]
    assert [(r["path"], r.get("rank"), r["kind"]) for r in rows] == [
        (["rng", "x"], 0, "array"), (["rng", "n"], 0, "json"), (["w"], None, "array"),
    ]


# -- a new user's first hour ----------------------------------------------------------------


def test_an_emulator_secret_like_test_leaves_the_output_clean_on_s3(s3loc):
    """AWS_SECRET_ACCESS_KEY=test and -o secret=test: `latest`, a directory
    named test and every other word keep their letters; where `test` appears
    as a credential (a backend error quoting its configuration), it is masked."""
    base, so = s3loc
    root = f"{base}/test"  # a path component equal to the secret
    creds = {**so, "key": "test", "secret": "test"}
    _managed(root, creds, saves=3)  # ckpt-2, ckpt-3
    env = {"AWS_SECRET_ACCESS_KEY": "test", "AWS_ACCESS_KEY_ID": "test"}
    args = ["-o", f"endpoint_url={so['endpoint_url']}", "-o", "secret=test", "-o", "key=test"]

    ls = run("ls", root, *args, env=env)
    assert ls.exit_code == 0, ls.output
    assert f"2 committed checkpoints in {root}; latest: {root}/ckpt-3" in ls.stdout
    inspect = run("inspect", root, *args, env=env)
    assert inspect.exit_code == 0, inspect.output
    assert f"checkpoint      {root}/ckpt-3" in inspect.stdout and "latest checkpoint" in inspect.stderr
    verify = run("-vv", "verify", root, *args, env=env)  # the debug log lines too
    assert verify.exit_code == 0, verify.output
    assert f"ok       {root}/ckpt-3" in verify.stdout and "OK: 2 checkpoints verified" in verify.stdout
    listing = json.loads(run("ls", root, "--json", *args, env=env).stdout)
    assert listing["latest"] == f"{root}/ckpt-3"
    for r in (ls, inspect, verify):
        assert "***" not in r.output, r.output

    # where it is a credential, it is masked: a backend's error text quoting its configuration
    def leaky(op, url):
        raise PermissionError(f"SignatureDoesNotMatch on the latest request: key=test secret=test "
                              f"{url}?X-Amz-Signature=f00dfeed")  # fmt: skip

    remove = add_global_hook(leaky)
    try:
        bad = run("-v", "ls", root, *args, env=env)
    finally:
        remove()
    assert bad.exit_code == 4
    assert "on the latest request: key=*** secret=***" in bad.output and f"{root}/manifest.json" in bad.output
    assert "X-Amz-Signature=***" in bad.output and "f00dfeed" not in bad.output
    assert "secret=test" not in bad.output and "key=test" not in bad.output


def test_verify_progress_counts_and_no_raw_log_lines(tmp_path):
    root = str(tmp_path / "run")
    _managed(root, None, saves=3)  # ckpt-2, ckpt-3
    r = run("verify", root)
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("verify: ") and "(100%)" in r.stderr  # plain progress lines: not a terminal
    read = 0
    for name in ("ckpt-2", "ckpt-3"):
        m = json.loads(open(f"{root}/{name}/{MANIFEST_KEY}").read())
        size = os.path.getsize(f"{root}/{name}/{MANIFEST_KEY}") + sum(o["size"] for o in m["objects"])
        n = len(m["objects"]) + 1
        assert f"ok       {root}/{name}  ({n} objects, {cli.human(size)})" in r.stdout
        read += size
    summary = r.stdout.splitlines()[-1]
    assert summary.startswith(f"OK: 2 checkpoints verified ({2 * n} objects, {cli.human(read)} read and checked) in ")
    assert run("verify", root, "-q").stderr == ""

    # a damaged manifest is named as such, not "(1 objects, 0 B)"
    with open(f"{root}/ckpt-2/{MANIFEST_KEY}", "w") as f:
        f.write("{broken")
    p = script("verify", root, module=True)  # a real process: no logging handler but the command's own
    assert p.returncode == 1
    assert f"DAMAGED  {root}/ckpt-2  (its manifest is damaged: no object checked)" in p.stdout
    assert "1 objects" not in p.stdout and "0 B)" not in p.stdout
    assert "FAILED: 1 damaged object in 1 of 2 checkpoints" in p.stdout
    # stderr holds progress lines only: no raw "ignoring ..." / "verified ..." log record
    assert p.stderr and all(line.startswith("verify: ") for line in p.stderr.splitlines()), p.stderr
    logged = script("-v", "verify", root, "-q", module=True)  # asked for: the log lines
    assert "ERROR cloudckpt: verified " in logged.stderr


def test_gc_of_a_missing_directory_exits_3(tmp_path, s3loc):
    r = run("gc", tmp_path / "nothing")
    assert r.exit_code == 3 and r.output.startswith(f"cloudckpt: error: no checkpoints at {tmp_path / 'nothing'}")
    (tmp_path / "empty").mkdir()
    assert run("gc", tmp_path / "empty").exit_code == 3
    root, so = s3loc
    r = run("gc", root, *opts(so))
    assert r.exit_code == 3 and f"no checkpoints at {root}" in r.output
    # a directory with checkpoints and nothing to collect: exit 0
    cloudckpt.save(f"{root}/ckpt-1", {"w": np.ones(2)}, storage_options=so)
    r = run("gc", root, *opts(so))
    assert r.exit_code == 0 and r.output == f"no garbage under {root}\n"


def test_gc_and_rm_show_progress(tmp_path):
    root = str(tmp_path / "run")
    _managed(root, None, saves=3)  # epoch 1: ckpt-2, ckpt-3
    s = open_storage(root)
    s.write("ckpt-8/data-e0-00000000000000aa/zarr.json", b"{}")  # older epoch: a crashed save
    s.write("ckpt-9/data-e0-00000000000000bb/zarr.json", b"{}")
    r = run("gc", root, "--yes")
    assert r.exit_code == 0 and "removed 2 items" in r.stdout
    assert "gc: 2 of 2 items (100%)" in r.stderr
    assert run("gc", root, "--yes").stderr == ""  # nothing to remove: no progress

    def slow(op, url):  # a slow object store: every delete takes 0.8 s
        if op == "delete":
            time.sleep(0.8)

    remove = add_global_hook(slow)
    try:
        r = run("rm", f"{root}/ckpt-2")
    finally:
        remove()
    assert r.exit_code == 0 and f"removed {root}/ckpt-2 (committed)" in r.stdout
    assert r.stderr.startswith(f"rm: removing {root}/ckpt-2 (1 s so far)"), r.stderr
    fast = run("rm", f"{root}/ckpt-3", "--yes")
    assert fast.exit_code == 0 and fast.stderr == ""  # done within a second: nothing to show


def test_ls_lists_checkpoints_saved_under_other_names(s3loc, tmp_path):
    root, so = s3loc
    names = ["c4", "c5", "c6", "c7", "c10"]
    for i, name in enumerate(names):
        cloudckpt.save(f"{root}/{name}", {"w": np.full(30_000, i)}, storage_options=so, options=SMALL)
    s = open_storage(root, so)
    s.write("notes/readme.txt", b"not a checkpoint")
    seen = []
    remove = add_global_hook(lambda op, url: seen.append((op, url)))
    try:
        r = run("ls", root, *opts(so))
    finally:
        remove()
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.stdout.splitlines()[1:-1]]
    assert [row[0] for row in rows] == names
    assert all(row[1] == "-" and "committed" in row and row[-1] == "unmanaged" and "*" not in row for row in rows)
    assert r.stdout.splitlines()[-1].startswith(f"5 unmanaged checkpoints in {root} (not named <name>-<N>")
    # one listing per sub-directory and one manifest read per checkpoint: no data object is read
    reads = sorted(url for op, url in seen if op.startswith("read"))
    assert reads == sorted(f"{root}/{n}/{MANIFEST_KEY}" for n in names)
    lists = [url for op, url in seen if op == "list"]
    assert all(lists.count(f"{root}/{n}") == 1 for n in [*names, "notes"])
    entries = json.loads(run("ls", root, "--json", *opts(so)).stdout)["entries"]
    assert [(e["name"], e["unmanaged"], e["number"], e["latest"]) for e in entries] == [
        (n, True, None, False) for n in names
    ]
    # verify reads them all; inspect of the directory points to them
    v = run("verify", root, *opts(so))
    assert v.exit_code == 0 and "OK: 5 checkpoints verified" in v.stdout
    i = run("inspect", root, *opts(so))
    assert i.exit_code == 3 and f"inspect one of {root}/c4, {root}/c5, {root}/c6, ..." in i.output

    # beside a manager's checkpoints: listed after them, never the latest
    local = str(tmp_path / "run")
    _managed(local, None, saves=3)
    cloudckpt.save(f"{local}/best", {"w": np.ones(3)})
    r = run("ls", local)
    assert r.exit_code == 0
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:-1]}
    assert list(lines) == ["ckpt-2", "ckpt-3", "best"]
    assert lines["ckpt-3"].split()[7] == "*" and "*" not in lines["best"] and lines["best"].endswith("unmanaged")
    assert r.stdout.splitlines()[-1] == (
        f"2 committed checkpoints in {local}; latest: {local}/ckpt-3; 1 unmanaged checkpoint "
        "(not named <name>-<N>: no manager lists or restores them; `cloudckpt inspect` reads one)"
    )


def test_an_unknown_storage_option_is_a_usage_error(tmp_path, s3loc, gcsloc):
    local = str(tmp_path / "run")
    cloudckpt.save(f"{local}/ckpt-1", {"w": np.ones(2)})
    for args in (["ls", local], ["inspect", local], ["verify", local], ["gc", local], ["rm", f"{local}/ckpt-1"],
                 ["cp", local, tmp_path / "copy"]):  # fmt: skip
        r = run(*args, "-o", "bogus_option=1")
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("cloudckpt: error: unknown storage option 'bogus_option' for "), r.output
        assert "auto_mkdir" in r.output  # what a local path takes
    assert os.path.exists(f"{local}/ckpt-1/{MANIFEST_KEY}") and not os.path.exists(tmp_path / "copy")
    assert run("ls", local, "-o", "auto_mkdir=true").exit_code == 0  # what a local filesystem takes is fine
    assert run("ls", "memory://cli-unknown-option", "-o", "bogus_option=1").exit_code == 2

    gsroot, go = gcsloc  # gcsfs ignores unknown options: checked against what GCSFileSystem takes
    r = run("ls", gsroot, *opts(go), "-o", "bogus_option=1")
    assert r.exit_code == 2 and f"unknown storage option 'bogus_option' for {gsroot}: gs://" in r.output
    assert run("ls", gsroot, *opts(go), "-o", "requester_pays=false").exit_code == 3  # known: nothing there
    s3root, so = s3loc  # s3fs hands them to aiobotocore, which rejects them at the first request
    cloudckpt.save(f"{s3root}/ckpt-1", {"w": np.ones(2)}, storage_options=so)
    r = run("ls", s3root, *opts(so), "-o", "bogus_option=1")
    assert r.exit_code == 2 and f"unknown storage option 'bogus_option' for {s3root} (s3 backend)" in r.output
    r = run("cp", f"{s3root}/ckpt-1", f"{gsroot}/ckpt-1", *opts(so, "--src-option"), *opts(go, "--dst-option"),
            "--dst-option", "bogus_option=1")  # fmt: skip
    assert r.exit_code == 2 and "unknown storage option 'bogus_option'" in r.output
    assert run("ls", s3root, *opts(so), "-o", "max_concurrency=4").exit_code == 0  # an S3FileSystem option


def test_a_missing_bucket_is_named(s3loc, gcsloc):
    for base, so, endpoint in ((*s3loc, "AWS_ENDPOINT_URL"), (*gcsloc, "STORAGE_EMULATOR_HOST")):
        proto = base.split("://")[0]
        url = f"{proto}://no-such-bucket-{uuid.uuid4().hex[:8]}/run"
        bucket = url.split("/")[2]
        for args in (["ls", url], ["inspect", url], ["verify", url], ["gc", url]):
            r = run(*args, *opts(so))
            assert r.exit_code == 3, (args, r.output)
            assert f"no such bucket: '{bucket}' does not exist, so there is nothing at {url}" in r.output
            assert endpoint in r.output
        # an existing bucket with nothing under the prefix: not "no such bucket"
        r = run("ls", base, *opts(so))
        assert r.exit_code == 3 and "no such bucket" not in r.output and f"no checkpoints at {base}" in r.output


# -- Azure (Azurite) ------------------------------------------------------------------


@pytest.fixture
def azloc(azure_server, azure_container):
    return f"az://{azure_container}/cli-{uuid.uuid4().hex[:10]}", servers.azure_storage_options(azure_server.endpoint_url)


def test_ls_inspect_verify_cp_rm_on_azure_configured_from_the_environment(azloc, azure_server, tmp_path):
    """Every command on an az:// URL, the account given only by
    AZURE_STORAGE_CONNECTION_STRING (adlfs reads it): no --option needed."""
    root, so = azloc
    _managed(root, so)  # ckpt-2, ckpt-3 remain (max_to_keep=2)
    env = {"AZURE_STORAGE_CONNECTION_STRING": so["connection_string"]}
    r = run("ls", root, "--json", env=env)
    assert r.exit_code == 0, r.output
    j = json.loads(r.output)
    assert j["latest"] == f"{root}/ckpt-3"
    assert {e["name"]: e["state"] for e in j["entries"]} == {"ckpt-2": "committed", "ckpt-3": "committed"}

    r = run("inspect", f"{root}/ckpt-3", "--json", env=env)
    assert r.exit_code == 0, r.output
    ji = json.loads(r.output)
    assert ji["checkpoint_number"] == 3 and ji["url"] == f"{root}/ckpt-3"
    leaves = {"/".join(map(str, x["path"])): x for x in ji["leaves"]}
    assert leaves["model/w"]["shape"] == [40, 100] and leaves["step"]["value"] == 3

    ok = run("verify", root, env=env)
    assert ok.exit_code == 0 and "OK: 2 checkpoints verified" in ok.output

    # cp az:// -> local disk -> az:// (another prefix): byte for byte, and it loads
    local = str(tmp_path / "copy")
    r = run("cp", f"{root}/ckpt-3", f"{local}/ckpt-3", env=env)
    assert r.exit_code == 0, r.output
    back = f"{root}-back"
    r = run("cp", f"{local}/ckpt-3", f"{back}/ckpt-3", env=env)
    assert r.exit_code == 0, r.output
    s = open_storage(root, so)
    assert open_storage(back, so).read(f"ckpt-3/{MANIFEST_KEY}") == s.read(f"ckpt-3/{MANIFEST_KEY}")
    restored = cloudckpt.load(f"{back}/ckpt-3", storage_options=so)
    assert np.array_equal(restored["model"]["w"], np.full((40, 100), 3, np.float32))

    # a flipped byte is caught
    m = json.loads(s.read(f"ckpt-3/{MANIFEST_KEY}"))
    bad_key = next(o["key"] for o in m["objects"] if "/c/" in o["key"])
    raw = bytearray(s.read(f"ckpt-3/{bad_key}"))
    raw[3] ^= 0x10
    s.write(f"ckpt-3/{bad_key}", bytes(raw))
    bad = run("verify", f"{root}/ckpt-3", env=env)
    assert bad.exit_code == 1 and f"damaged: {root}/ckpt-3/{bad_key}: crc32c mismatch" in bad.output

    # rm: the older checkpoint goes, the latest needs --yes
    r = run("rm", f"{root}/ckpt-2", env=env)
    assert r.exit_code == 0 and f"removed {root}/ckpt-2 (committed)" in r.output, r.output
    assert s.list_all("ckpt-2") == {} and "ckpt-2" not in s.list_dir()[1]
    r = run("rm", f"{root}/ckpt-3", env=env)
    assert r.exit_code == 5 and "--yes" in r.output
    assert s.exists(f"ckpt-3/{MANIFEST_KEY}")


def test_a_missing_azure_container_is_named_and_no_key_is_shown(azloc):
    root, so = azloc
    url = f"az://no-such-container-{uuid.uuid4().hex[:8]}/run"
    container = url.split("/")[2]
    for args in (["ls", url], ["verify", url]):
        r = run(*args, *opts(so))
        assert r.exit_code == 3, (args, r.output)
        assert f"no such container: '{container}' does not exist, so there is nothing at {url}" in r.output
        assert "AZURE_STORAGE_CONNECTION_STRING" in r.output
    # a wrong account key: permission denied (exit 4), and neither key is echoed
    key = servers.AZURITE_KEY
    wrong = "W" + key[1:]
    r = run("ls", root, *opts({"connection_string": so["connection_string"].replace(key, wrong)}))
    assert r.exit_code == 4, r.output
    assert "permission denied" in r.output and key not in r.output and wrong not in r.output
