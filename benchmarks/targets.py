"""Storage targets: local disk, memory://, S3 (moto), GCS (fake-gcs-server), shaped S3, S3 on disk (s3rver).

Object-store requests are counted at the server side: moto's access log for
``s3``; the shaping/counting proxy's log for ``s3-lat`` and ``gcs``
(fake-gcs-server logs no requests); for ``s3-disk`` the request log that
``benchmarks/s3rver_launch.js`` writes around s3rver.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("local", "memory", "s3", "gcs", "s3-lat", "s3-disk")
BUCKET = "cloudckpt-bench"


def _servers() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import servers

    return servers


class Target:
    name = "?"
    in_process = False  # save and load must run in one process (memory://)
    object_store = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def url(self, key: str) -> str:
        raise NotImplementedError

    @property
    def storage_options(self) -> dict[str, Any]:
        return {}

    @property
    def child_env(self) -> dict[str, str]:
        return {}

    def counter(self) -> Counter[str] | None:
        """Requests seen by the server so far, by method (None: not counted)."""
        return None

    def objects(self, url: str) -> tuple[int, int] | None:
        return None

    def cleanup(self, url: str) -> None:
        pass

    def page_cache_path(self, url: str) -> str | None:
        """The local files that hold the checkpoint at ``url`` (its loads are then measured cold and warm, with
        these files evicted from / read into the page cache); None where there are none (memory, moto)."""
        return None

    def describe(self) -> str:
        return self.name


class LocalTarget(Target):
    name = "local"

    def __init__(self, workdir: str | None, cold: bool = False) -> None:
        self.workdir = workdir
        self.cold = cold
        self._made: str | None = None

    def start(self) -> None:
        if self.workdir is None:
            self._made = tempfile.mkdtemp(prefix="cloudckpt-bench-")
            self.workdir = self._made
        os.makedirs(self.workdir, exist_ok=True)

    def stop(self) -> None:
        if self._made:
            shutil.rmtree(self._made, ignore_errors=True)

    def url(self, key: str) -> str:
        assert self.workdir is not None
        return os.path.join(self.workdir, key)

    def objects(self, url: str) -> tuple[int, int] | None:
        n = size = 0
        for root, _dirs, files in os.walk(url):
            for f in files:
                n += 1
                size += os.path.getsize(os.path.join(root, f))
        return n, size

    def page_cache_path(self, url: str) -> str | None:
        return url

    def drop_cache(self, url: str) -> None:
        """Evict the files' pages from the page cache (``pagecache.evict``: POSIX_FADV_DONTNEED, then checked)."""
        from benchmarks.pagecache import evict

        evict(url)

    def cleanup(self, url: str) -> None:
        shutil.rmtree(url, ignore_errors=True)

    def describe(self) -> str:
        return f"local disk ({self.workdir})"


class MemoryTarget(Target):
    name = "memory"
    in_process = True

    def url(self, key: str) -> str:
        return f"memory://bench/{key}"

    def describe(self) -> str:
        return "memory:// (fsspec MemoryFileSystem; save and load in one process)"


class ShapingProxy:
    """A benchmarks/proxy.py subprocess (with ``extra`` arguments) in front of ``upstream`` (host:port),
    logging every request to ``log``."""

    def __init__(self, upstream: str, latency_ms: str, bandwidth_mbs: float, log: Path, seed: int = 0,
                 extra: tuple[str, ...] = ()) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.proxy", "--upstream", upstream, "--latency-ms", latency_ms,
             "--bandwidth-mbs", str(bandwidth_mbs), "--log", str(log), "--seed", str(seed), *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_LOG_LINE = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP')


def requests_between(a: Counter[str] | None, b: Counter[str] | None) -> dict[str, int] | None:
    """The server's requests between two :meth:`Target.counter` readings, by method, with their total
    (None where the target does not count them)."""
    if a is None or b is None:
        return None
    d = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}
    d["total"] = sum(d.values())
    return d


class _LogCounter:
    """Counts requests in an access log, incrementally."""

    def __init__(self, path: Path, moto: bool) -> None:
        self.path = path
        self.moto = moto
        self.pos = 0
        self.counts: Counter[str] = Counter()

    def __call__(self) -> Counter[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return Counter(self.counts)
        cut = data.rfind(b"\n") + 1
        self.pos += cut
        for line in data[:cut].decode("latin-1").splitlines():
            if self.moto:
                m = _LOG_LINE.search(line)
                if not m or m.group(2).startswith("/moto-api"):
                    continue
                method = m.group(1)
            else:
                method = line.split(" ", 1)[0]
                if not method:
                    continue
            self.counts[method] += 1
        return Counter(self.counts)


class S3Target(Target):
    """moto server; with ``shaped`` a latency/bandwidth proxy sits between client and moto."""

    object_store = True
    proxy_class: type[ShapingProxy] = ShapingProxy  # the proxy in front of moto when shaped

    def __init__(self, shaped: bool = False, latency_ms: str = "20,50", bandwidth_mbs: float = 25.0) -> None:
        self.shaped = shaped
        self.name = "s3-lat" if shaped else "s3"
        self.latency_ms = latency_ms
        self.bandwidth_mbs = bandwidth_mbs
        self.srv: Any = None
        self.proxy: ShapingProxy | None = None
        self._count: _LogCounter | None = None
        self._fs: Any = None

    def start(self) -> None:
        servers = _servers()
        self.srv = servers.start_moto_server()
        servers.make_s3_bucket(self.srv.endpoint_url, BUCKET)
        if self.shaped:
            log = Path(self.srv.tmpdir) / "proxy.log"
            self.proxy = self.proxy_class(self.srv.endpoint_url.split("//", 1)[1], self.latency_ms, self.bandwidth_mbs, log)
            self._count = _LogCounter(log, moto=False)
        else:
            self._count = _LogCounter(Path(self.srv.log_path), moto=True)

    def stop(self) -> None:
        if self.proxy:
            self.proxy.stop()
        if self.srv:
            self.srv.stop()

    @property
    def endpoint_url(self) -> str:
        return self.proxy.endpoint_url if self.proxy else self.srv.endpoint_url

    def url(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return _servers().s3_storage_options(self.endpoint_url)

    @property
    def child_env(self) -> dict[str, str]:
        # torchsnapshot's S3 plugin builds its own aiobotocore client from the environment
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    def counter(self) -> Counter[str] | None:
        assert self._count is not None
        time.sleep(0.05)  # let the server flush its log line of the last request
        return self._count()

    def _direct_fs(self) -> Any:
        if self._fs is None:
            import s3fs

            self._fs = s3fs.S3FileSystem(skip_instance_cache=True, **_servers().s3_storage_options(self.srv.endpoint_url))
        return self._fs

    def objects(self, url: str) -> tuple[int, int] | None:
        fs = self._direct_fs()
        found = fs.find(url.split("://", 1)[1], detail=True, refresh=True)
        return len(found), sum(int(v.get("size") or 0) for v in found.values())

    def cleanup(self, url: str) -> None:
        # drop everything (moto keeps objects in memory), then recreate the bucket
        self.srv.reset()
        _servers().make_s3_bucket(self.srv.endpoint_url, BUCKET)
        self._fs = None

    def describe(self) -> str:
        if self.shaped:
            return (f"S3 via moto server behind a loopback shaper: {self.latency_ms} ms per request (uniform), "
                    f"{self.bandwidth_mbs:g} MB/s per connection and direction")
        return "S3 via moto server on 127.0.0.1"


class GCSTarget(Target):
    name = "gcs"
    object_store = True
    proxy_class: type[ShapingProxy] = ShapingProxy  # the (unshaped) proxy in front of fake-gcs-server, which logs no requests

    def __init__(self) -> None:
        self.srv: Any = None
        self.proxy: ShapingProxy | None = None
        self._count: _LogCounter | None = None

    def start(self) -> None:
        servers = _servers()
        self.srv = servers.start_fake_gcs_server()
        servers.make_gcs_bucket(self.srv.endpoint_url, BUCKET)
        log = Path(self.srv.tmpdir) / "proxy.log"
        self.proxy = self.proxy_class(self.srv.endpoint_url.split("//", 1)[1], "0", 0, log)
        self._count = _LogCounter(log, moto=False)

    def stop(self) -> None:
        if self.proxy:
            self.proxy.stop()
        if self.srv:
            self.srv.stop()

    def url(self, key: str) -> str:
        return f"gs://{BUCKET}/{key}"

    @property
    def storage_options(self) -> dict[str, Any]:
        assert self.proxy is not None
        return _servers().gcs_storage_options(self.proxy.endpoint_url)

    @property
    def child_env(self) -> dict[str, str]:
        assert self.proxy is not None
        return {"STORAGE_EMULATOR_HOST": self.proxy.endpoint_url, "TENSORSTORE_GCS_HTTP_URL": self.proxy.endpoint_url}

    def counter(self) -> Counter[str] | None:
        assert self._count is not None
        time.sleep(0.02)
        return self._count()

    def _fs(self) -> Any:
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(skip_instance_cache=True, **_servers().gcs_storage_options(self.srv.endpoint_url))

    def objects(self, url: str) -> tuple[int, int] | None:
        found = self._fs().find(url.split("://", 1)[1], detail=True)
        return len(found), sum(int(v.get("size") or 0) for v in found.values())

    def cleanup(self, url: str) -> None:
        self.srv.reset()
        _servers().make_gcs_bucket(self.srv.endpoint_url, BUCKET)

    def describe(self) -> str:
        return "GCS via fake-gcs-server (memory backend) on 127.0.0.1, requests counted by a pass-through proxy"


class S3DiskTarget(Target):
    """S3 on s3rver (``benchmarks/s3disk.py``): objects are files under its data directory on local disk."""

    name = "s3-disk"
    object_store = True

    def __init__(self, workdir: str | None = None) -> None:
        self.workdir = workdir
        self.srv: Any = None
        self._count: _LogCounter | None = None
        self._fs: Any = None

    def start(self) -> None:
        from benchmarks.s3disk import S3rverProcess

        if self.workdir:
            os.makedirs(self.workdir, exist_ok=True)
        self.srv = S3rverProcess(BUCKET, base=self.workdir)
        self._count = _LogCounter(self.srv.log_path, moto=False)

    def stop(self) -> None:
        if self.srv:
            self.srv.stop()

    def url(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    @property
    def storage_options(self) -> dict[str, Any]:
        from benchmarks.s3disk import KEY, SECRET

        return dict(key=KEY, secret=SECRET, endpoint_url=self.srv.endpoint_url, anon=False)

    @property
    def child_env(self) -> dict[str, str]:
        from benchmarks.s3disk import KEY, SECRET

        return {"AWS_ENDPOINT_URL": self.srv.endpoint_url, "AWS_ENDPOINT_URL_S3": self.srv.endpoint_url,
                "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}

    def counter(self) -> Counter[str] | None:
        assert self._count is not None
        time.sleep(0.05)  # the launcher logs a request when its response has finished
        return self._count()

    def objects(self, url: str) -> tuple[int, int] | None:
        if self._fs is None:
            import s3fs

            self._fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)
        found = self._fs.find(url.split("://", 1)[1], detail=True, refresh=True)
        return len(found), sum(int(v.get("size") or 0) for v in found.values())

    def _key(self, url: str) -> str:
        prefix = f"s3://{BUCKET}/"
        if not url.startswith(prefix):
            raise ValueError(f"{url!r} is not in the s3-disk target's bucket {BUCKET!r}")
        return url[len(prefix):].strip("/")

    def page_cache_path(self, url: str) -> str | None:
        return str(self.srv.key_path(self._key(url)))

    def cleanup(self, url: str) -> None:
        self.srv.remove(self._key(url))
        self._fs = None

    def describe(self) -> str:
        from benchmarks.s3disk import VERSION

        return (f"S3 via s3rver {VERSION} (one single-threaded Node.js process) on 127.0.0.1, every object a file "
                "in its data directory on local disk (under --workdir, else a temp dir); cold loads evict the "
                "server's files of the checkpoint from the page cache (checked with mincore and fincore), warm "
                "loads read them first; requests counted by the launcher's log")


def make_target(name: str, *, workdir: str | None = None, cold: bool = False, latency_ms: str = "20,50",
                bandwidth_mbs: float = 25.0) -> Target:
    if name == "local":
        return LocalTarget(workdir, cold)
    if name == "memory":
        return MemoryTarget()
    if name == "s3":
        return S3Target()
    if name == "s3-lat":
        return S3Target(shaped=True, latency_ms=latency_ms, bandwidth_mbs=bandwidth_mbs)
    if name == "gcs":
        return GCSTarget()
    if name == "s3-disk":
        return S3DiskTarget(workdir)
    raise ValueError(f"unknown target {name!r}: choose from {', '.join(TARGETS)}")


def moto_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("moto") is not None and importlib.util.find_spec("s3fs") is not None
