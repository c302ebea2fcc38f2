"""Infra tests: the emulator fixtures work with s3fs / gcsfs directly."""

import os
import time

import pytest
import servers

needs_s3 = pytest.mark.skipif("s3" not in servers.selected_backends(),
                              reason="s3 not in CLOUDCKPT_TEST_BACKENDS")
needs_gcs = pytest.mark.skipif("gcs" not in servers.selected_backends(),
                               reason="gcs not in CLOUDCKPT_TEST_BACKENDS")


def _fs(backend):
    return backend.filesystem()  # sync fs, skip_instance_cache=True


def test_gcsfs_env_trap_is_disarmed():
    assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"].lower() not in ("true", "1")
    import gcsfs
    import gcsfs.core

    assert gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem


def test_object_roundtrip_create_list_delete(object_backend):
    fs = _fs(object_backend)
    base = object_backend.url("dir")
    a, b = f"{base}/a.bin", f"{base}/sub/b.bin"

    fs.pipe_file(a, b"hello")
    fs.pipe_file(b, b"world")
    assert fs.cat_file(a) == b"hello"
    assert fs.cat_file(b) == b"world"

    # create-only write on new key succeeds, on existing key raises and keeps content
    c = f"{base}/c.json"
    fs.pipe_file(c, b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(c, b"second", mode="create")
    assert fs.cat_file(c) == b"first"
    with pytest.raises(FileExistsError):
        fs.pipe_file(a, b"clobber", mode="create")
    assert fs.cat_file(a) == b"hello"

    strip = lambda p: p.split("/dir/", 1)[1]  # noqa: E731
    assert sorted(strip(p) for p in fs.find(base, refresh=True)) == ["a.bin", "c.json", "sub/b.bin"]
    assert sorted(strip(p) for p in fs.ls(base, detail=False, refresh=True)) == ["a.bin", "c.json", "sub"]

    fs.rm(a)
    assert not fs.exists(a)
    fs.rm(base, recursive=True)
    assert fs.find(base, refresh=True) == []


def test_backend_urls_are_unique_per_test(backend, request):
    root = backend.url()
    assert backend.url("x", "y.json") == root + "/x/y.json"
    prefix = {"local": "/", "memory": "memory://t-", "s3": "s3://", "gcs": "gs://", "azure": "az://"}[backend.name]
    assert root.startswith(prefix)
    assert (backend.storage_options is None) == (backend.name in ("local", "memory"))
    fs = _fs(backend)
    fs.mkdirs(root, exist_ok=True)
    fs.pipe_file(backend.url("k"), b"v")
    assert fs.cat_file(backend.url("k")) == b"v"
    seen = request.config.__dict__.setdefault("_cloudckpt_roots", set())
    assert root not in seen
    seen.add(root)


def test_gcs_small_write_is_fast(gcs_server, gcs_bucket):
    """Guard: the gcsfs ZB/HNS Storage-Control probe made every write take ~60 s."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(skip_instance_cache=True,
                             **servers.gcs_storage_options(gcs_server.endpoint_url))
    t0 = time.monotonic()
    fs.pipe_file(f"{gcs_bucket}/hns-guard/x", b"x" * 1024)
    fs.pipe_file(f"{gcs_bucket}/hns-guard/y", b"y", mode="create")
    dt = time.monotonic() - t0
    assert fs.cat_file(f"{gcs_bucket}/hns-guard/x") == b"x" * 1024
    assert dt < 10, f"gcsfs write took {dt:.1f}s: GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT trap is back"
    fs.rm(f"{gcs_bucket}/hns-guard", recursive=True)


@needs_s3
def test_moto_reset_and_stop():
    srv = servers.start_moto_server()  # private instance: reset must not hit the shared one
    try:
        servers.make_s3_bucket(srv.endpoint_url, "reset-me")
        servers.make_s3_bucket(srv.endpoint_url, "reset-me")  # idempotent
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True,
                               **servers.s3_storage_options(srv.endpoint_url))
        fs.pipe_file("reset-me/k", b"v")
        srv.reset()
        assert "reset-me" not in [p.rstrip("/") for p in fs.ls("", refresh=True)]
    finally:
        srv.stop()
    assert srv.proc.returncode is not None  # reaped, no zombie
    srv.stop()  # idempotent


@needs_gcs
def test_gcs_reset_and_stop():
    srv = servers.start_fake_gcs_server()
    try:
        servers.make_gcs_bucket(srv.endpoint_url, "reset-me")
        servers.make_gcs_bucket(srv.endpoint_url, "reset-me")  # idempotent
        import gcsfs

        fs = gcsfs.GCSFileSystem(skip_instance_cache=True,
                                 **servers.gcs_storage_options(srv.endpoint_url))
        fs.pipe_file("reset-me/a/k", b"v")
        srv.reset()
        assert not fs.exists("reset-me/a/k")
        assert "reset-me" not in [p.rstrip("/") for p in fs.ls("", refresh=True)]
    finally:
        srv.stop()
    assert srv.proc.returncode is not None


def test_start_error_includes_log_tail():
    with pytest.raises(servers.ServerStartError, match=r"exited with code 3(.|\n)*boom-marker"):
        servers._start("bogus", lambda p: ["sh", "-c", "echo boom-marker >&2; exit 3"],
                       "/", timeout=5, attempts=1)
