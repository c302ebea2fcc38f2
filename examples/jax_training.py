"""Train a small JAX model with sharded parameters: checkpoints on S3, survive preemption, resume exactly.

    python examples/jax_training.py                        # demo on a local moto S3 server (pip install 'moto[server]')
    python examples/jax_training.py --bucket my-bucket --prefix runs/mlp    # train on real S3
    python examples/jax_training.py --dir /tmp/run         # train on local disk (or any fsspec URL)

The JAX twin of ``torch_spot_training.py``. JAX arrays are immutable, so a
restore cannot write into them: ``Checkpoint(params=params, opt_state=...)``
*rebinds* its attributes, and the loop reads its state back from the
checkpoint object (``ckpt.params``) after ``restore_or_initialize()``.
Each restored array is placed with the sharding of the array it replaces
(here: split over a mesh of all local devices; on CPU the script asks JAX
for 2 devices), and optax's NamedTuple states come back as their own
classes. Uses optax when installed, else a small Adam written here.

With neither ``--dir`` nor ``--bucket`` (or with ``--demo``) it preempts
itself with SIGTERM, resumes, and checks the loss curve against an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import typing
from pathlib import Path

import jax

try:  # two CPU devices, so that the parameters are really sharded (must precede any computation)
    jax.config.update("jax_num_cpu_devices", 2)
except (RuntimeError, AttributeError):  # computed already, or a jax without the option
    pass
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import cloudckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _spot_demo  # examples/_spot_demo.py

try:
    import optax
except ImportError:
    optax = None


class AdamState(typing.NamedTuple):
    """Adam's state when optax is missing: a NamedTuple, like optax's."""

    count: jax.Array
    mu: dict
    nu: dict


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """(init, update) of Adam, optax-style."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AdamState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update(grads, state, params=None):
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        c1, c2 = 1 - b1**count, 1 - b2**count
        updates = jax.tree.map(lambda m, v: -lr * (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
        return updates, AdamState(count, mu, nu)

    return init, update


def make_optimizer(lr: float):
    if optax is not None:
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr))
        return tx.init, tx.update
    return adam(lr)


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The data of one step: a pure function of the step, so a resumed run sees the same data."""
    x = np.random.default_rng(1000 + step).standard_normal((32, 16), dtype=np.float32)
    return x, np.sin(x.sum(axis=1, keepdims=True))


def train(args: argparse.Namespace, emit=_spot_demo.emit) -> None:
    """Train to ``args.steps``, resuming from the newest checkpoint; report each step with ``emit``."""
    directory, storage_options = _spot_demo.location(args)
    mesh = Mesh(np.array(jax.devices()), ("model",))
    split = NamedSharding(mesh, PartitionSpec(None, "model"))  # hidden units split over the devices
    whole = NamedSharding(mesh, PartitionSpec())
    hidden = 32 * len(jax.devices())

    init = np.random.default_rng(0)  # numpy for the one-off set-up: no XLA compilation per op
    params = {
        "w1": jax.device_put(init.standard_normal((16, hidden), dtype=np.float32) / 4, split),
        "b1": jax.device_put(np.zeros(hidden, np.float32), NamedSharding(mesh, PartitionSpec("model"))),
        "w2": jax.device_put(init.standard_normal((hidden, 1), dtype=np.float32) / 8, whole),
        "b2": jax.device_put(np.zeros(1, np.float32), whole),
    }
    opt_init, opt_update = make_optimizer(3e-3)

    def loss_fn(p, x, y, key):
        h = jax.nn.gelu(x @ p["w1"] + p["b1"])
        keep = jax.random.bernoulli(key, 0.9, h.shape)  # dropout: needs the RNG key restored on resume
        return jnp.mean((jnp.where(keep, h / 0.9, 0.0) @ p["w2"] + p["b2"] - y) ** 2)

    # Every array committed to a sharding (optimizer moments like their parameter, the rest
    # replicated), and the step pinned to them: one compilation, also after a resume.
    by_shape = {a.shape: a.sharding for a in jax.tree.leaves(params)}
    opt_state = jax.tree.map(lambda a: jax.device_put(a, by_shape.get(a.shape, whole)), jax.jit(opt_init)(params))
    key = jax.device_put(np.array([0, 42], np.uint32), whole)  # == jax.random.PRNGKey(42)
    shardings = jax.tree.map(lambda a: a.sharding, (params, opt_state, key))

    @functools.partial(jax.jit, out_shardings=(*shardings, whole))
    def train_step(p, opt_state, key, x, y):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, sub)
        updates, opt_state = opt_update(grads, opt_state, p)
        return jax.tree.map(jnp.add, p, updates), opt_state, key, loss

    ckpt = cloudckpt.Checkpoint(params=params, opt_state=opt_state, key=key, step=0)
    manager = cloudckpt.CheckpointManager(
        ckpt,
        directory,
        max_to_keep=3,
        step_counter=lambda: ckpt.step,
        checkpoint_interval=args.save_every,
        storage_options=storage_options,
        async_save=True,
    )
    if manager.restore_or_initialize() is not None:  # rebinds ckpt.params, ckpt.opt_state, ...
        assert ckpt.params["w1"].sharding == split  # placed like the arrays they replaced
        emit(event="resumed", step=ckpt.step, checkpoint=manager.latest_checkpoint)

    with cloudckpt.PreemptionCheckpointHandler(manager, grace_period=30) as handler:
        while ckpt.step < args.steps:
            ckpt.params, ckpt.opt_state, ckpt.key, loss = train_step(
                ckpt.params, ckpt.opt_state, ckpt.key, *batch(ckpt.step)
            )
            ckpt.step += 1
            emit(step=ckpt.step, loss=float(loss))
            manager.save(checkpoint_number=ckpt.step)  # a no-op between intervals
            handler.check(ckpt.step)  # after SIGTERM: save this step, exit 143
            time.sleep(args.sleep)
        manager.save(checkpoint_number=ckpt.step, check_interval=False)  # skipped if saved at this step
        manager.sync()
    emit(event="done", step=ckpt.step, checkpoint=manager.latest_checkpoint)


def reference(args: argparse.Namespace) -> list[dict]:
    """An uninterrupted run in this process: the curve a resumed run must match."""
    return _spot_demo.reference(train, args)


def main() -> int:
    return _spot_demo.main(__file__, __doc__ or "", train)


if __name__ == "__main__":
    sys.exit(main())
