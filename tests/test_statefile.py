"""The TF-format ``checkpoint`` state file, and that manifests, not it, are the truth."""

from __future__ import annotations

import re

import numpy as np
import pytest
from manager_helpers import NOT_S3, FakeClock, committed, files, manager, on, read_text, remove, write_bytes

import cloudckpt
from cloudckpt.layout.statefile import CheckpointState, format_state, parse_state


# -- the text format ------------------------------------------------------------
@on(*NOT_S3)
def test_format_is_tf_text_format_with_relative_paths(backend):
    d = backend.url("run")
    clock = FakeClock(100.0)
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2, clock=clock)
    m.save()
    clock.t = 200.5
    m.save()
    clock.t = 300.25
    m.save()
    assert read_text(backend, f"{d}/checkpoint") == (
        'model_checkpoint_path: "ckpt-3"\n'
        'all_model_checkpoint_paths: "ckpt-2"\n'
        'all_model_checkpoint_paths: "ckpt-3"\n'
        "all_model_checkpoint_timestamps: 200.5\n"
        "all_model_checkpoint_timestamps: 300.25\n"
        "last_preserved_timestamp: 99.0\n"
    )


def test_parse_and_format_round_trip_and_errors():
    s = CheckpointState('we"ird\\name-3', ["a-1", 'we"ird\\name-3'], [1.5, 2.0], 0.25)
    assert parse_state(format_state(s)) == s
    s = CheckpointState("modèle-3", ["modèle-3"], [1.0], None)
    assert 'model_checkpoint_path: "modèle-3"' in format_state(s)  # UTF-8, no \u escapes
    assert parse_state(format_state(s)) == s
    # what TF writes for relative paths, with extra whitespace and single quotes
    text = """
        model_checkpoint_path: "./model.ckpt-687529"
        all_model_checkpoint_paths: './model.ckpt-687500'
        all_model_checkpoint_paths: "./model.ckpt-687529"
    """
    st = parse_state(text)
    assert st.model_checkpoint_path == "./model.ckpt-687529"
    assert st.all_model_checkpoint_paths == ["./model.ckpt-687500", "./model.ckpt-687529"]
    for bad in ("", 'all_model_checkpoint_paths: "a"\n', "model_checkpoint_path: unquoted\n", 'x: "y"\n'):
        with pytest.raises(ValueError):
            parse_state(bad)
    with pytest.raises(ValueError, match="timestamps"):
        parse_state('model_checkpoint_path: "a"\nall_model_checkpoint_paths: "a"\nall_model_checkpoint_timestamps: 1\nall_model_checkpoint_timestamps: 2\n')


# -- manifests are the truth ------------------------------------------------------
def _three(backend):
    d = backend.url("run")
    w = np.zeros(1)
    ckpt = cloudckpt.Checkpoint(w=w)
    m = manager(backend, ckpt, None)
    for i in range(3):
        w[:] = i + 1
        m.save()
    return d, [f"{d}/ckpt-{i}" for i in (1, 2, 3)]


def test_state_file_is_rebuilt_from_manifests(backend):
    d, urls = _three(backend)
    good = read_text(backend, f"{d}/checkpoint")
    damages = {
        "missing": None,
        "corrupt": b"\xff\x00 this is not a CheckpointState {{{",
        # a crash after ckpt-3 committed, before the state file was written
        "stale": format_state(CheckpointState("ckpt-2", ["ckpt-1", "ckpt-2"], [1.0, 2.0], 0.0)).encode(),
        "lying": b'model_checkpoint_path: "ckpt-9"\nall_model_checkpoint_paths: "ckpt-9"\n',
    }
    if backend.name == "s3":  # moto is slow: the realistic case only (a crash before the state write)
        damages = {"stale": damages["stale"]}
    for damage, data in damages.items():
        if data is None:
            remove(backend, f"{d}/checkpoint")
        else:
            write_bytes(backend, f"{d}/checkpoint", data)
        w = np.zeros(1)
        m = manager(backend, cloudckpt.Checkpoint(w=w), None)
        assert (m.latest_checkpoint, m.checkpoints) == (urls[2], urls), damage
        assert cloudckpt.latest_checkpoint(d, storage_options=backend.storage_options) == urls[2]
        assert m.restore_or_initialize() == urls[2] and w.tolist() == [3.0]
        assert read_text(backend, f"{d}/checkpoint") == good, damage  # rewritten when the manager claimed


@on(*NOT_S3)
def test_checkpoint_without_manifest_is_not_listed(backend):
    d, urls = _three(backend)
    remove(backend, f"{urls[2]}/manifest.json")  # ckpt-3 is no checkpoint any more
    w = np.zeros(1)
    m = manager(backend, cloudckpt.Checkpoint(w=w), None)
    assert m.checkpoints == urls[:2] and m.latest_checkpoint == urls[1]
    assert cloudckpt.latest_checkpoint(d, storage_options=backend.storage_options) == urls[1]
    assert m.restore_or_initialize() == urls[1] and w.tolist() == [2.0]
    # its data had no manifest and an older epoch: the new owner collected it
    assert files(backend, urls[2]) == {}
    assert 'all_model_checkpoint_paths: "ckpt-3"' not in read_text(backend, f"{d}/checkpoint")


@on(*NOT_S3)
def test_corrupt_manifest_is_not_listed_and_left_alone(backend):
    _, urls = _three(backend)
    write_bytes(backend, f"{urls[2]}/manifest.json", b'{"format": "not really"')
    m = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 1)
    assert m.latest_checkpoint == urls[2]  # damaged, numbered above the latest: counts as the newest
    with pytest.raises(cloudckpt.CorruptCheckpointError, match=re.escape(urls[2])):
        m.restore_or_initialize()
    assert m.restore_or_initialize(fallback=True) == urls[1]
    m.save(checkpoint_number=4)
    assert read_text(backend, f"{urls[2]}/manifest.json") == '{"format": "not really"'  # never destroyed
    assert any(k.startswith("data-") for k in files(backend, urls[2]))
    assert not committed(backend, urls[0]) and not committed(backend, urls[1])  # retention as usual
