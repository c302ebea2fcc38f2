"""Checkpoint: in-place restore, state_dict objects, strict and partial restore,
and that a Checkpoint's checkpoint is an ordinary one for cloudckpt.load."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from manager_helpers import NOT_S3, manager, on

import cloudckpt


class Module:
    """Duck-typed torch-like object: state_dict() / load_state_dict()."""

    def __init__(self, n: int = 3) -> None:
        self.weight = np.zeros(n, np.float32)
        self.steps = 0
        self.loaded: list[dict] = []

    def state_dict(self):
        return {"weight": self.weight, "steps": self.steps}

    def load_state_dict(self, state):
        self.loaded.append(state)
        self.weight[...] = state["weight"]
        self.steps = state["steps"]


class FreshOptimizer:
    """Like a fresh torch optimizer: no state yet, accepts any saved state."""

    def __init__(self) -> None:
        self.state: dict = {}

    def state_dict(self):
        return {"state": self.state, "lr": 0.1}

    def load_state_dict(self, state):
        self.state = state["state"]


def _tree():
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "layers": [np.ones(2), {"b": np.full(3, 2, np.int64)}],
        "pair": (np.zeros(1), np.ones(1)),
    }


@on(*NOT_S3)
def test_inplace_restore_keeps_identity(backend):
    model = _tree()
    opt = [np.ones(4), {"m": np.full(2, 5.0)}]
    step = np.array(7, dtype=np.int64)
    ckpt = cloudckpt.Checkpoint(model=model, opt=opt, step=step, epoch=3, lr=0.5, tag="run")
    m = manager(backend, ckpt, 2)
    m.save()

    ids = {
        "model": id(model),
        "w": id(model["w"]),
        "layers": id(model["layers"]),
        "l0": id(model["layers"][0]),
        "l1": id(model["layers"][1]),
        "b": id(model["layers"][1]["b"]),
        "pair0": id(model["pair"][0]),
        "opt": id(opt),
        "opt1m": id(opt[1]["m"]),
        "step": id(step),
    }
    model["w"] += 100
    model["layers"][0][:] = -1
    model["layers"][1]["b"][:] = 0
    model["pair"][0][:] = 9
    opt[1]["m"][:] = 0
    step[...] = 0
    ckpt.epoch, ckpt.lr, ckpt.tag = 0, 0.0, "other"

    m2 = manager(backend, ckpt, 2)
    assert m2.restore_or_initialize() == m.latest_checkpoint
    assert ckpt.model is model and ckpt.opt is opt and ckpt.step is step
    now = {
        "model": id(ckpt.model),
        "w": id(model["w"]),
        "layers": id(model["layers"]),
        "l0": id(model["layers"][0]),
        "l1": id(model["layers"][1]),
        "b": id(model["layers"][1]["b"]),
        "pair0": id(ckpt.model["pair"][0]),
        "opt": id(ckpt.opt),
        "opt1m": id(opt[1]["m"]),
        "step": id(ckpt.step),
    }
    assert now == ids
    np.testing.assert_array_equal(model["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert model["w"].dtype == np.float32
    assert model["layers"][0].tolist() == [1.0, 1.0]
    assert model["layers"][1]["b"].tolist() == [2, 2, 2]
    assert ckpt.model["pair"][0].tolist() == [0.0]
    assert opt[1]["m"].tolist() == [5.0, 5.0]
    assert int(step) == 7
    # JSON scalars are rebound
    assert (ckpt.epoch, ckpt.lr, ckpt.tag) == (3, 0.5, "run")
    assert ckpt.save_counter == 1


def test_state_dict_objects_get_their_whole_dict(backend):
    mod = Module()
    mod.weight[:] = [1, 2, 3]
    mod.steps = 4
    opt = FreshOptimizer()
    opt.state = {"0": {"exp_avg": np.full(3, 0.5)}}
    ckpt = cloudckpt.Checkpoint(model=mod, optimizer=opt)
    m = manager(backend, ckpt, 2)
    url = m.save()

    # cloudckpt.load reads it without the objects: one entry per name, state dicts, save_counter
    loaded = cloudckpt.load(url, storage_options=backend.storage_options)
    assert set(loaded) == {"model", "optimizer", "save_counter"}
    assert loaded["model"]["weight"].tolist() == [1.0, 2.0, 3.0]
    assert loaded["model"]["steps"] == 4
    assert loaded["optimizer"]["state"]["0"]["exp_avg"].tolist() == [0.5] * 3
    assert loaded["save_counter"] == 1

    mod2, opt2 = Module(), FreshOptimizer()  # a fresh optimizer: no state to compare with
    ckpt2 = cloudckpt.Checkpoint(model=mod2, optimizer=opt2)
    manager(backend, ckpt2, 2).restore_or_initialize()
    assert len(mod2.loaded) == 1
    assert set(mod2.loaded[0]) == {"weight", "steps"}
    assert mod2.weight.tolist() == [1.0, 2.0, 3.0] and mod2.steps == 4
    assert opt2.state["0"]["exp_avg"].tolist() == [0.5] * 3


def test_strict_restore_lists_every_problem_and_changes_nothing():
    url = "memory://strict-ckpt/one"
    saved = cloudckpt.Checkpoint(
        a=np.zeros((2, 3), np.float32),
        b=np.zeros(4, np.int32),
        c=np.ones(1),
        tree={"x": np.ones(2), "gone": np.ones(1)},
        lst=[np.ones(1), np.ones(1)],
        step=5,
    )
    saved.save_counter = 9
    saved.write(url)

    a = np.full((3, 2), 7, np.float32)  # shape differs
    b = np.full(4, 7, np.float64)  # dtype differs
    d = np.full(1, 7.0)  # not in the checkpoint
    tree = {"x": np.full(2, 7.0), "new": np.full(1, 7.0)}
    lst = [np.full(1, 7.0)]  # length differs
    mod = Module()
    target = cloudckpt.Checkpoint(a=a, b=b, d=d, tree=tree, lst=lst, mod=mod, step=0)
    with pytest.raises(ValueError) as ei:
        target.read(url)
    msg = str(ei.value)
    for needle in ("'a'", "(3, 2)", "'b'", "float64", "int32", "'d'", "'c'", "tree/new", "tree/gone", "lst", "'mod'", "partial=True"):
        assert needle in msg, (needle, msg)
    # nothing was overwritten or rebound
    assert (a == 7).all() and (b == 7).all() and (d == 7).all() and (tree["x"] == 7).all() and (lst[0] == 7).all()
    assert mod.loaded == [] and target.step == 0 and target.save_counter == 0


@on(*NOT_S3)
def test_partial_restore_restores_the_intersection(backend, caplog):
    d = backend.url("run")
    w = np.arange(3.0)
    src = cloudckpt.Checkpoint(model={"w": w, "old": np.ones(2)}, extra=np.ones(1), step=4)
    manager(backend, src, 2, sub="run").save()

    w2 = np.zeros(3)
    new = np.full(2, 9.0)
    dst = cloudckpt.Checkpoint(model={"w": w2, "new": new}, step=0, fresh=np.full(1, 8.0))
    m = manager(backend, dst, 2, sub="run")
    with pytest.raises(ValueError):
        m.restore_or_initialize()
    assert (w2 == 0).all()
    with caplog.at_level(logging.WARNING, logger="cloudckpt"):
        assert m.restore_or_initialize(partial=True) == f"{d}/ckpt-1"
    assert dst.model["w"] is w2 and w2.tolist() == [0.0, 1.0, 2.0]
    assert new.tolist() == [9.0, 9.0] and dst.fresh.tolist() == [8.0]
    assert dst.step == 4 and dst.save_counter == 1
    left_out = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for needle in ("model/new", "model/old", "extra", "fresh"):
        assert needle in left_out

    w3 = np.zeros(3)
    ckpt3 = cloudckpt.Checkpoint(model={"w": w3})
    ckpt3.read(f"{d}/ckpt-1", storage_options=backend.storage_options, partial=True)
    assert w3.tolist() == [0.0, 1.0, 2.0]


def test_partial_restore_still_refuses_shape_mismatch():
    url = cloudckpt.Checkpoint(w=np.ones(3)).write("memory://partial-shape/c")
    w = np.zeros(4)
    with pytest.raises(ValueError, match="shape"):
        cloudckpt.Checkpoint(w=w).read(url, partial=True)
    assert (w == 0).all()


def test_write_and_read_at_an_explicit_path(backend):
    w = np.arange(4, dtype=np.int16)
    ckpt = cloudckpt.Checkpoint(w=w, step=3)
    url = ckpt.write(backend.url("single"), storage_options=backend.storage_options)
    assert url == backend.url("single")
    assert ckpt.save_counter == 0  # write() is not a managed save
    w[:] = 0
    ckpt.step = 0
    ckpt.read(url, storage_options=backend.storage_options)
    assert w.tolist() == [0, 1, 2, 3] and ckpt.step == 3
    with pytest.raises(cloudckpt.CheckpointExistsError):
        ckpt.write(url, storage_options=backend.storage_options)
    with pytest.raises(cloudckpt.CheckpointNotFoundError):
        ckpt.read(backend.url("nothing-here"), storage_options=backend.storage_options)


def test_reserved_and_unknown_names():
    with pytest.raises(ValueError, match="reserved"):
        cloudckpt.Checkpoint(save_counter=1)
    ckpt = cloudckpt.Checkpoint(w=np.ones(1))
    with pytest.raises(AttributeError):
        _ = ckpt.nope
    assert ckpt.names == ["w"]
