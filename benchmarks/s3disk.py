"""s3rver, an S3 server that keeps every object as a file on disk, for the ``s3-disk`` benchmark target.

moto keeps objects in memory, so a 16 GiB state cannot be saved to it next to the 16 GiB the process holds on
a 24 GB machine. s3rver (npm package ``s3rver``, a single Node.js process) writes each object to
``<data dir>/<bucket>/<key>._S3rver_object`` (with ``._S3rver_metadata.json`` and ``._S3rver_object.md5``
beside it) and streams GETs from those files, so what the server holds in memory does not grow with the state,
and a load can be made cold by evicting those files from the page cache.

``install()`` runs ``npm install`` once into a cache directory (``$CLOUDCKPT_BENCH_CACHE``, default
``~/.cache/cloudckpt-bench``); ``S3rverProcess`` starts it on 127.0.0.1 with ``s3rver_launch.js``, which logs
every request as ``METHOD URL STATUS`` (s3rver's own log leaves the method out).

Conditional writes: s3rver 3.7.1 ignores ``If-None-Match: *`` on PutObject; a second create-only write of
an existing key replaces it (HTTP 200) instead of failing with 412, so cloudckpt's create-only manifest is
not enforced by this server (one writer per checkpoint in the benchmarks, so nothing races there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

VERSION = "3.7.1"
KEY = SECRET = "S3RVER"  # s3rver's built-in credentials
LAUNCHER = Path(__file__).resolve().parent / "s3rver_launch.js"


def cache_dir() -> Path:
    return Path(os.environ.get("CLOUDCKPT_BENCH_CACHE") or Path.home() / ".cache" / "cloudckpt-bench") / f"s3rver-{VERSION}"


def install() -> Path:
    """The installed s3rver package directory (``npm install s3rver@VERSION`` into the cache on first use)."""
    pkg = cache_dir() / "node_modules" / "s3rver"
    if (pkg / "package.json").is_file():
        return pkg
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError(
            "the s3-disk target needs Node.js and npm to install and run s3rver: "
            f"{'node' if node is None else 'npm'} is not on PATH; install them (e.g. apt-get install nodejs npm) "
            "or choose another --target")
    cache_dir().mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache_dir()), f"s3rver@{VERSION}"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (pkg / "package.json").is_file():
        raise RuntimeError(f"npm install s3rver@{VERSION} into {cache_dir()} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return pkg


class S3rverProcess:
    """s3rver on 127.0.0.1 (port chosen by the OS), one bucket, data under ``base`` (a new temp dir if None).

    Example (needs Node.js and npm)::

        srv = S3rverProcess("my-bucket")
        srv.endpoint_url   # 'http://127.0.0.1:PORT'; objects under srv.datadir / "my-bucket"
        srv.stop()
    """

    def __init__(self, bucket: str, base: str | None = None, timeout: float = 30.0) -> None:
        pkg = install()
        self.tmpdir = tempfile.mkdtemp(prefix="cloudckpt-s3rver-", dir=base)
        self.datadir = Path(self.tmpdir) / "data"
        self.datadir.mkdir()
        self.log_path = Path(self.tmpdir) / "requests.log"
        self.stderr_path = Path(self.tmpdir) / "stderr.log"
        self.bucket = bucket
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                ["node", str(LAUNCHER), str(pkg), str(self.datadir), bucket, str(self.log_path)],
                stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # READY <port>, or EOF if it died
        if not line.startswith("READY"):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"s3rver did not start (data dir {self.datadir}): {line!r} "
                               f"{self.stderr_path.read_text()[-800:]}")
        self.port = int(line.split()[1])
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def key_path(self, key: str) -> Path:
        """Where the objects under ``key`` (a prefix in the bucket) are stored."""
        return self.datadir / self.bucket / key

    def remove(self, key: str) -> None:
        """Delete every object under the prefix ``key`` from disk (s3rver lists by walking its directory)."""
        path = self.key_path(key)
        shutil.rmtree(path, ignore_errors=True)
        for p in path.parent.glob(path.name + "._S3rver_*"):
            p.unlink(missing_ok=True)

    def version(self) -> str:
        return VERSION

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
