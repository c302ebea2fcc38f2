"""Any other fsspec filesystem: a real FTP server (pyftpdlib) through fsspec's FTPFileSystem.

FTP has no write that fails when the file exists, so cloudckpt commits there by
checking that the manifest is absent and then writing it, and says so with a
WeakCommitWarning; made an error, that warning refuses the save before
anything is written. One FTP connection cannot serve two threads, so requests
go one at a time. Directories are made before files are written into them.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import servers

import cloudckpt
from cloudckpt.storage import WriteMode, open_storage

pytest.importorskip("pyftpdlib", reason="the FTP server of these tests is pyftpdlib (pip install pyftpdlib)")


@pytest.fixture(scope="module")
def ftp_root(tmp_path_factory):
    """A pyftpdlib server (anonymous, writable) in a subprocess; yields (ftp:// URL, its directory on disk)."""
    home = tmp_path_factory.mktemp("ftp-home")
    port = servers.free_port()
    log = open(home.parent / f"ftp-{port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyftpdlib", "-i", "127.0.0.1", "-p", str(port), "-w", "-d", str(home)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    import socket

    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"pyftpdlib did not start on port {port}") from None
            time.sleep(0.05)
    yield f"ftp://127.0.0.1:{port}", home
    proc.terminate()
    proc.wait(10)
    log.close()


def _state(n: int = 40) -> dict:
    rng = np.random.default_rng(7)
    # more objects than a store's request concurrency: one FTP connection serves them one at a time
    return {"layers": {f"l{i}": rng.standard_normal((64, 33)).astype(np.float32) for i in range(n)},
            "big": rng.standard_normal(300_000), "step": 12, "name": "ftp"}


def test_backend_declares_no_atomic_create_and_no_concurrency(ftp_root):
    url, _ = ftp_root
    caps = open_storage(f"{url}/caps-{uuid.uuid4().hex[:8]}").capabilities
    assert caps.create_only is False
    assert caps.concurrent_requests is False


def test_round_trip_warns_once_naming_the_guarantee_lost(ftp_root):
    url, home = ftp_root
    run = f"run-{uuid.uuid4().hex[:8]}"
    state = _state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cloudckpt.save(f"{url}/{run}/ckpt", state)
    weak = [w for w in caught if issubclass(w.category, cloudckpt.WeakCommitWarning)]
    assert len(weak) == 1, [str(w.message) for w in caught]
    text = str(weak[0].message)
    assert f"{url}/{run}/ckpt/manifest.json" in text
    assert "FTPFileSystem" in text and "not fenced" in text and "one writer per directory" in text
    out = cloudckpt.load(f"{url}/{run}/ckpt")
    for k, v in state["layers"].items():
        assert out["layers"][k].tobytes() == v.tobytes()
    assert out["big"].tobytes() == state["big"].tobytes()
    assert (out["step"], out["name"]) == (12, "ftp")
    assert (home / run / "ckpt" / "manifest.json").is_file()  # the bytes really are on the server's disk


def test_committed_manifest_is_never_overwritten(ftp_root):
    url, home = ftp_root
    run = f"run-{uuid.uuid4().hex[:8]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cloudckpt.WeakCommitWarning)
        cloudckpt.save(f"{url}/{run}/ckpt", {"w": np.arange(5.0)})
        before = (home / run / "ckpt" / "manifest.json").read_bytes()
        with pytest.raises(cloudckpt.CheckpointExistsError):
            cloudckpt.save(f"{url}/{run}/ckpt", {"w": np.zeros(5)})
        # the storage verb itself refuses too (the check before the write)
        s = open_storage(f"{url}/{run}/ckpt")
        assert s.write_if_absent("manifest.json", b"{}") is False
        with pytest.raises(cloudckpt.errors.ObjectExistsError, match=r"manifest\.json"):
            s.write("manifest.json", b"{}", mode=WriteMode.CREATE_ONLY)
    assert (home / run / "ckpt" / "manifest.json").read_bytes() == before
    assert cloudckpt.load(f"{url}/{run}/ckpt")["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_warning_as_error_refuses_before_anything_is_written(ftp_root):
    url, home = ftp_root
    run = f"run-{uuid.uuid4().hex[:8]}"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=cloudckpt.WeakCommitWarning)
        with pytest.raises(cloudckpt.WeakCommitWarning, match="no create-only write"):
            cloudckpt.save(f"{url}/{run}/ckpt", {"w": np.arange(3.0)})
    assert not (home / run).exists() or not any((home / run).rglob("*"))


def test_manager_retention_and_restore_on_ftp(ftp_root):
    url, home = ftp_root
    directory = f"{url}/mgr-{uuid.uuid4().hex[:8]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cloudckpt.WeakCommitWarning)
        ckpt = cloudckpt.Checkpoint(w=np.zeros(4), step=0)
        manager = cloudckpt.CheckpointManager(ckpt, directory, max_to_keep=2)
        for step in range(1, 4):
            ckpt.w = np.full(4, float(step))
            ckpt.step = step
            manager.save()
        assert [p.rsplit("-", 1)[-1] for p in manager.checkpoints] == ["2", "3"]
        restored = cloudckpt.Checkpoint(w=np.zeros(4), step=0)
        again = cloudckpt.CheckpointManager(restored, directory, max_to_keep=2)
        assert again.restore_or_initialize() == again.latest_checkpoint
        assert restored.w.tolist() == [3.0] * 4 and restored.step == 3
    on_disk = sorted(p.name for p in (home / directory.rsplit("/", 1)[-1]).iterdir() if p.name.startswith("ckpt-"))
    assert on_disk == ["ckpt-2", "ckpt-3"]


def test_url_carries_host_and_port(ftp_root):
    from cloudckpt.storage.opener import backend_class

    url, _ = ftp_root
    options = backend_class("ftp").url_options("ftp", f"{url}/x")
    assert options["host"] == "127.0.0.1" and options["port"] == int(url.rsplit(":", 1)[1])


def test_ftp_server_is_real(ftp_root):
    """The fixture's server answers plain ftplib: the tests above go over a real socket."""
    import ftplib

    url, home = ftp_root
    (Path(home) / "probe.txt").write_bytes(b"hi")
    host, port = url[len("ftp://"):].split(":")
    with ftplib.FTP() as f:
        f.connect(host, int(port), timeout=5)
        f.login()
        assert "probe.txt" in f.nlst()
