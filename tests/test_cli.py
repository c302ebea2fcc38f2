"""The ``cloudckpt`` command: every subcommand's output and exit status, against real servers.

Most invocations go through click's CliRunner (in process); the exit
statuses and the environment-variable configuration are also checked with
real subprocesses (the console script and ``python -m cloudckpt.cli``).
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
import servers
from click.testing import CliRunner

import cloudckpt
from cloudckpt import cli, ownership
from cloudckpt.manifest import MANIFEST_KEY
from cloudckpt.storage import open_storage

SMALL = cloudckpt.StoreOptions(pack_threshold=1024, chunk_bytes=32 * 1024)
COMMANDS = ["ls", "inspect", "verify", "cp", "rm", "gc"]


def run(*args, env=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], env=env, catch_exceptions=False)


def script(*args, env=None, module=False, stderr=subprocess.PIPE):
    """Run the console script (or ``python -m cloudckpt.cli``) in a real process."""
    exe = shutil.which("cloudckpt")
    argv = [sys.executable, "-m", "cloudckpt.cli"] if module or exe is None else [exe]
    full_env = {**os.environ, **(env or {})}
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
    assert "Exit statuses" in top.output and "STORAGE_EMULATOR_HOST" in top.output
    for c in COMMANDS:
        r = run(c, "--help")
        assert r.exit_code == 0, c
        assert "Usage: main" in r.output or "Usage: cloudckpt" in r.output
        assert "Exit statuses:" in r.output and "5  refused" in r.output
    assert "--src-option" in run("cp", "--help").output
    assert "--yes" in run("gc", "--help").output and "--all" in run("gc", "--help").output
    demo = run("demo", "--help")
    assert demo.exit_code == 0 and "--dir" in demo.output


def test_demo_passes_arguments_and_exit_status(monkeypatch):
    import cloudckpt.demo

    seen = []
    monkeypatch.setattr(cloudckpt.demo, "main", lambda argv=None: seen.append(argv) or 7)
    r = CliRunner().invoke(cli.main, ["demo", "--dir", "/tmp/x", "--steps", "3"])
    assert r.exit_code == 7 and seen == [["--dir", "/tmp/x", "--steps", "3"]]


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
    assert ok.exit_code == 0 and "OK: 2 checkpoint(s)" in ok.output
    assert "ckpt-4 has no manifest" in ok.output
    assert run("verify", root, "--strict", env=env).exit_code == 1  # the partial save is a warning
    bad_key = next(o["key"] for o in m["objects"] if "/c/" in o["key"])
    raw = bytearray(s.read(f"ckpt-3/{bad_key}"))
    raw[7] ^= 0x04
    s.write(f"ckpt-3/{bad_key}", bytes(raw))
    bad = run("verify", root, env=env)
    assert bad.exit_code == 1
    assert f"damaged: {root}/ckpt-3/{bad_key}: crc32c mismatch" in bad.output
    assert "FAILED: 1 damaged object(s) in 1 of 2 checkpoint(s)" in bad.output
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


def test_cp_draws_a_progress_bar_on_a_terminal(tmp_path):
    src = cloudckpt.save(str(tmp_path / "a" / "ckpt-1"), {"w": np.ones(300_000)}, options=SMALL)
    master, slave = pty.openpty()
    try:
        p = script("cp", src, tmp_path / "b" / "ckpt-1", stderr=slave)
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
    tty = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0
    assert "100%" in tty and "B/s" in tty and "|" in tty  # tqdm: bar, bytes, rate
    assert "cp: " in tty and "ETA" not in tty  # not the plain log line


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
    assert "dry run: 3 item(s)" in r.output
    assert s.exists("ckpt-7/data-e1-00000000000000aa/zarr.json") and len(s.list_incomplete_uploads()) == 1

    r = run("gc", root, "--yes", *opts(so))
    assert r.exit_code == 0 and "removed 3 item(s)" in r.output
    assert s.list_incomplete_uploads() == []
    assert s.list_all("ckpt-7") == {} and s.list_all("ckpt-1/data-e1-00000000000000cc") == {}
    assert s.exists("ckpt-8/data-e2-00000000000000bb/zarr.json")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [other]  # outside the directory: untouched
    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=f"elsewhere-{prefix}/big", UploadId=other)

    j = json.loads(run("gc", root, "--yes", "--all", "--json", *opts(so)).output)
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
    assert r.exit_code == 4 and "bogus_password" in r.output
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

    from cloudckpt.cli import main as cli_main

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
