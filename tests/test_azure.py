"""Azure Blob Storage (az://, abfs://, abfss://) against Azurite: what the
commit's safety rests on (create-only), one layer of retries, per-call
timeouts, errors without credentials, and the Azurite helper of tests/servers.py.

The suites parametrized over the ``backend`` fixture run on Azure too; this
module holds what is Azure's own.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
import uuid

import numpy as np
import pytest
import servers

import cloudckpt
from cloudckpt.errors import ObjectExistsError, StorageError, StoragePermissionError
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.storage import RetryPolicy, WriteMode, add_global_hook, open_storage

NO_WAIT = RetryPolicy(attempts=2, base_delay=0, max_delay=0)


@pytest.fixture
def az(azure_server, azure_container):
    """(url of a fresh prefix, storage options) on Azurite."""
    return f"az://{azure_container}/t-{uuid.uuid4().hex[:10]}", servers.azure_storage_options(azure_server.endpoint_url)


def _etag(options: dict, url: str) -> str:
    """The blob's ETag, asked of the azure SDK directly (not through cloudckpt)."""
    from azure.storage.blob import BlobClient

    container, blob = url.split("://", 1)[1].split("/", 1)
    with BlobClient.from_connection_string(options["connection_string"], container, blob) as client:
        return str(client.get_blob_properties().etag)


# ---------------------------------------------------------------- create-only: the commit


def test_a_second_commit_of_the_same_manifest_raises_and_the_first_stays(az):
    url, so = az
    state = {"w": np.arange(10, dtype=np.float32), "step": 1}
    ckpt = cloudckpt.save(f"{url}/ckpt-1", state, storage_options=so)
    storage = open_storage(ckpt, so)
    manifest = storage.read(MANIFEST_KEY)
    etag = _etag(so, storage.url_for(MANIFEST_KEY))
    for payload in (manifest, b'{"forged": true}'):
        with pytest.raises(ObjectExistsError) as info:
            storage.write(MANIFEST_KEY, payload, mode=WriteMode.CREATE_ONLY)
        assert info.value.url == storage.url_for(MANIFEST_KEY) and info.value.operation == "write_create"
    assert storage.read(MANIFEST_KEY) == manifest and _etag(so, storage.url_for(MANIFEST_KEY)) == etag
    # a save of the same checkpoint is refused, and the first still loads
    with pytest.raises(cloudckpt.CheckpointExistsError):
        cloudckpt.save(ckpt, {"w": np.zeros(3)}, storage_options=so)
    loaded = cloudckpt.load(ckpt, storage_options=so)
    assert loaded["step"] == 1 and np.array_equal(loaded["w"], state["w"])


def test_racing_create_only_writes_exactly_one_wins(az):
    url, so = az
    storage = open_storage(url, so)
    start = threading.Barrier(8)
    won: list[bytes] = []

    def writer(i: int) -> None:
        payload = f"writer {i}".encode()
        start.wait()
        if storage.write_if_absent("race/manifest.json", payload):
            won.append(payload)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, won
    assert storage.read("race/manifest.json") == won[0]


def test_an_object_above_the_single_upload_size_goes_up_as_committed_blocks(az):
    """Above the SDK's 64 MiB single upload: staged blocks committed at once,
    read back whole and by ranges."""
    from azure.storage.blob import BlobClient

    url, so = az
    storage = open_storage(url, so)
    rng = np.random.default_rng(3)
    a, b = rng.bytes(40 << 20), rng.bytes(30 << 20)
    storage.write("big", [a, memoryview(b)])
    out = bytearray(len(a) + len(b))
    storage.read_into("big", memoryview(out))
    assert out == a + b and storage.size("big") == len(out)
    assert storage.read("big", len(a) - 5, len(a) + 5) == a[-5:] + b[:5]
    container, blob = storage.url_for("big").split("://", 1)[1].split("/", 1)
    with BlobClient.from_connection_string(so["connection_string"], container, blob) as client:
        committed, uncommitted = client.get_block_list("all")
    assert len(committed) > 1 and not uncommitted


def test_abfs_and_abfss_urls_reach_the_same_blobs(az):
    url, so = az
    rest = url.split("://", 1)[1]
    open_storage(url, so).write("k", b"v")
    for scheme in ("abfs", "abfss"):
        s = open_storage(f"{scheme}://{rest}", so)
        assert s.read("k") == b"v" and s.capabilities.create_only
        assert s.url == f"{scheme}://{rest}"


# ---------------------------------------------------------------- one layer of retries, timeouts


def test_an_unreachable_endpoint_is_tried_once_per_attempt(az):
    """The SDK's own policy (3 retries 15-24 s apart) is off: two attempts of
    cloudckpt's policy fail within a second, not after a minute."""
    url, so = az
    dead = so["connection_string"].replace(url_port(so), str(servers.free_port()))
    storage = open_storage(url, {"connection_string": dead}, retry=NO_WAIT)
    attempts: list[str] = []
    remove = add_global_hook(lambda op, u: attempts.append(op))
    t0 = time.monotonic()
    try:
        with pytest.raises(StorageError) as info:
            storage.read("k")
    finally:
        remove()
    assert time.monotonic() - t0 < 5
    assert attempts == ["read", "read"] and info.value.transient
    assert "failed after retries" in str(info.value) and storage.url_for("k") in str(info.value)


def url_port(options: dict) -> str:
    return options["connection_string"].split("BlobEndpoint=http://127.0.0.1:", 1)[1].split("/", 1)[0]


def test_a_request_that_hangs_is_cut_by_request_timeout(az):
    """A server that accepts and never answers: the per-call timeout ends each
    attempt (the SDK's own read timeout is 60 s)."""
    url, so = az
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        hung = so["connection_string"].replace(url_port(so), str(port))
        storage = open_storage(url, {"connection_string": hung}, retry=NO_WAIT, request_timeout=1.0)
        assert storage.capabilities.call_timeout
        t0 = time.monotonic()
        with pytest.raises(StorageError) as info:
            storage.read("k")
        elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 10, elapsed  # two attempts of ~1 s
    assert info.value.transient


# ---------------------------------------------------------------- errors name the URL, never a credential


def test_errors_never_show_azure_credentials(az):
    url, so = az
    key = servers.AZURITE_KEY
    wrong_key = "Z" + key[1:]
    wrong = so["connection_string"].replace(key, wrong_key)
    storage = open_storage(url, {"connection_string": wrong}, retry=NO_WAIT)
    with pytest.raises(StoragePermissionError) as denied:
        storage.write("k", b"v")
    dead = so["connection_string"].replace(url_port(so), str(servers.free_port()))
    with pytest.raises(StorageError) as unreachable:
        open_storage(url, {"connection_string": dead}, retry=NO_WAIT).exists("k")
    with pytest.raises(ValueError) as malformed:
        open_storage(url, {"connection_string": f"AccountKey={wrong_key};garbage"})
    sas = "sv=2024-01-01&ss=b&srt=sco&sp=r&se=2030-01-01&sig=S1GNATURE-" + uuid.uuid4().hex
    with pytest.raises(StorageError) as bad_sas:
        endpoint = so["connection_string"].split("BlobEndpoint=", 1)[1].rstrip(";")
        open_storage(url, {"connection_string": f"BlobEndpoint={endpoint};SharedAccessSignature={sas}"},
                     retry=NO_WAIT).read("k")
    for info in (denied, unreachable, malformed, bad_sas):
        text = str(info.value) + "".join(traceback.format_exception(info.value))
        for secret in (key, wrong_key, sas, sas.rsplit("sig=", 1)[1]):
            assert secret not in text, (secret, text)
    assert storage.url_for("k") in str(denied.value) and "storage_options" in str(denied.value)


def test_a_missing_container_is_named(az):
    url, so = az
    container = f"no-such-{uuid.uuid4().hex[:8]}"
    assert open_storage(url, so).missing_bucket() is None
    assert open_storage(f"az://{container}/run", so).missing_bucket() == container


# ---------------------------------------------------------------- the Azurite helper


def test_azurite_reset_deletes_every_container():
    srv = servers.start_azurite_server()
    try:
        for name in ("reset-one", "reset-two"):
            servers.make_azure_container(srv.endpoint_url, name)
        s = open_storage("az://reset-one/run", servers.azure_storage_options(srv.endpoint_url))
        s.write("k", b"v")
        assert s.missing_bucket() is None
        srv.reset()
        assert s.missing_bucket() == "reset-one"
        assert open_storage("az://reset-two/x", servers.azure_storage_options(srv.endpoint_url)).missing_bucket()
    finally:
        srv.stop()
    assert not srv.running


def test_without_node_azurite_is_unavailable_naming_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, no npm, no azurite-blob
    with pytest.raises(servers.AzuriteUnavailable, match=r"Node\.js and npm \(node not found on PATH\)"):
        servers.azurite_blob_binary(tmp_path / "cache")


def test_an_npm_install_that_fails_is_an_error_with_npms_message(tmp_path, monkeypatch):
    """Node.js and npm present, the registry unreachable (a closed port on
    127.0.0.1): a ServerStartError quoting npm, not a skip."""
    import shutil

    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs Node.js and npm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in (node, npm):
        os.symlink(tool, bin_dir / os.path.basename(tool))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.path.dirname(node)}")  # no azurite-blob there
    if shutil.which("azurite-blob"):
        pytest.skip("azurite-blob is installed next to node: nothing would be installed")
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{servers.free_port()}/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("npm_config_offline", "false")
    with pytest.raises(servers.ServerStartError) as info:
        servers.azurite_blob_binary(tmp_path / "cache")
    assert not isinstance(info.value, servers.AzuriteUnavailable)
    message = str(info.value)
    assert f"azurite@{servers.AZURITE_VERSION}" in message and "failed (exit" in message
    assert "npm error" in message and "ECONNREFUSED" in message, message
