# These env vars MUST be set before anything imports gcsfs / botocore.
# gcsfs decides at *import time* whether GCSFileSystem is the ExtendedGcsFileSystem,
# which probes a gRPC storage-layout API per bucket; an emulator has none, so
# every write stalls ~60 s (docs/cloud.md, "Google Cloud Storage").
import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# Fake credentials so botocore never picks up real ones; region only via env
# (with client_kwargs={"region_name": "us-east-1"}, s3fs.mkdir sends a
# LocationConstraint that moto refuses when creating a bucket).
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ.pop("AWS_SECURITY_TOKEN", None)
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import json
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if "gcsfs" in sys.modules:  # pragma: no cover - only if a plugin imported it first
    warnings.warn("gcsfs was imported before tests/conftest.py set "
                  "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT; gcsfs writes may stall 60 s", stacklevel=1)

sys.path.insert(0, str(Path(__file__).parent))
import servers

ALL_BACKENDS = servers.ALL_BACKENDS
OBJECT_BACKENDS = ("s3", "gcs", "azure")
S3_BUCKET = "cloudckpt-test"
GCS_BUCKET = "cloudckpt-test"
AZURE_CONTAINER = "cloudckpt-test"


try:
    SELECTED = servers.selected_backends()
except ValueError as e:
    raise pytest.UsageError(str(e)) from None


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """With CLOUDCKPT_SKIP_LOG=<path>, write every skipped test or module and its
    reason there as JSON ([{"nodeid": ..., "reason": ...}]): .ci/run reruns those
    that skipped for a missing framework once it has installed the frameworks."""
    path = os.environ.get("CLOUDCKPT_SKIP_LOG")
    if not path:
        return
    skipped = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        skipped.append({"nodeid": report.nodeid, "reason": reason})
    Path(path).write_text(json.dumps(skipped, indent=1) + "\n")


# ---------------------------------------------------------------- servers

@pytest.fixture(scope="session")
def s3_server():
    """moto S3 server subprocess (started on first use, stopped at session end)."""
    if "s3" not in SELECTED:
        pytest.skip("s3 not in CLOUDCKPT_TEST_BACKENDS")
    srv = servers.start_moto_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server subprocess (started on first use, stopped at session end)."""
    if "gcs" not in SELECTED:
        pytest.skip("gcs not in CLOUDCKPT_TEST_BACKENDS")
    srv = servers.start_fake_gcs_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def azure_server():
    """Azurite's blob service subprocess (started on first use, stopped at session end).
    Skips, naming why, where Node.js or npm is missing; an npm install that fails is an error."""
    if "azure" not in SELECTED:
        pytest.skip("azure not in CLOUDCKPT_TEST_BACKENDS")
    try:
        srv = servers.start_azurite_server()
    except servers.AzuriteUnavailable as e:
        pytest.skip(str(e))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_server) -> str:
    servers.make_s3_bucket(s3_server.endpoint_url, S3_BUCKET)
    return S3_BUCKET


@pytest.fixture(scope="session")
def gcs_bucket(gcs_server) -> str:
    servers.make_gcs_bucket(gcs_server.endpoint_url, GCS_BUCKET)
    return GCS_BUCKET


@pytest.fixture(scope="session")
def azure_container(azure_server) -> str:
    servers.make_azure_container(azure_server.endpoint_url, AZURE_CONTAINER)
    return AZURE_CONTAINER


# ---------------------------------------------------------------- backends

@dataclass
class Backend:
    """One storage backend for one test.

    `root` is a unique, not-yet-existing location for this test; `url(*parts)`
    joins parts onto it ("/"-separated). Local roots are plain paths (no file://)
    under the test's tmp_path; the directory is NOT created.
    """

    name: str                          # "local" | "memory" | "s3" | "gcs" | "azure"
    root: str
    storage_options: dict | None = None
    server: servers.ServerProcess | None = field(default=None, repr=False)

    def url(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts)])

    @property
    def is_object_store(self) -> bool:
        return self.name in OBJECT_BACKENDS

    def filesystem(self):
        """A fresh *sync* fsspec filesystem for inspecting what the library wrote."""
        import fsspec

        protocol = {"local": "file", "memory": "memory", "s3": "s3", "gcs": "gs", "azure": "az"}[self.name]
        return fsspec.filesystem(protocol, skip_instance_cache=True,
                                 **(self.storage_options or {}))


def _make_backend(name: str, request) -> Backend:
    uid = uuid.uuid4().hex[:12]
    if name == "local":
        tmp_path = request.getfixturevalue("tmp_path")
        return Backend("local", str(tmp_path / f"ckpt-{uid}"), None)
    if name == "memory":
        return Backend("memory", f"memory://t-{uid}", None)
    if name == "s3":
        srv = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        return Backend("s3", f"s3://{bucket}/{uid}",
                       servers.s3_storage_options(srv.endpoint_url), srv)
    if name == "gcs":
        srv = request.getfixturevalue("gcs_server")
        bucket = request.getfixturevalue("gcs_bucket")
        return Backend("gcs", f"gs://{bucket}/{uid}",
                       servers.gcs_storage_options(srv.endpoint_url), srv)
    if name == "azure":
        srv = request.getfixturevalue("azure_server")
        container = request.getfixturevalue("azure_container")
        return Backend("azure", f"az://{container}/{uid}",
                       servers.azure_storage_options(srv.endpoint_url), srv)
    raise ValueError(name)


def _backend_fixture(request):
    b = _make_backend(request.param, request)
    yield b
    if b.name == "memory":  # MemoryFileSystem is process-global: don't leak between tests
        import fsspec

        fs = fsspec.filesystem("memory")
        path = b.root[len("memory://"):]
        if fs.exists(path):
            fs.rm(path, recursive=True)


@pytest.fixture(params=SELECTED, ids=str)
def backend(request):
    """Backend over every selected backend (CLOUDCKPT_TEST_BACKENDS, default all of them)."""
    yield from _backend_fixture(request)


@pytest.fixture(params=[b for b in SELECTED if b in OBJECT_BACKENDS], ids=str)
def object_backend(request):
    """Backend over the selected object stores only (s3, gcs, azure)."""
    yield from _backend_fixture(request)


@pytest.fixture(params=[b for b in SELECTED if b == "local"], ids=str)
def local_backend(request):
    """The local-disk Backend only."""
    yield from _backend_fixture(request)
