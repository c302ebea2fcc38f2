"""jax.distributed processes as a cloudckpt group.

A multi-process JAX job (``jax.distributed.initialize``) saves and restores
global ``jax.Array``s with every process calling cloudckpt with the same
group::

    from cloudckpt.frameworks.jax_group import group_for
    group = group_for()                    # all processes of the job
    cloudckpt.save(url, state, process_group=group)
    manager = cloudckpt.CheckpointManager(ckpt, directory, process_group=group)

(Without ``process_group``, :func:`cloudckpt.distributed.group.resolve_group` picks this
group by itself once ``jax.distributed`` is initialized with several
processes, unless torch.distributed is too.
``process_group=cloudckpt.SINGLE_PROCESS`` saves from one process alone,
which refuses arrays sharded over other processes.)

The few agreements a collective save needs (every rank's description of its
state, every rank's result, rank 0's outcome) go through the key-value store
and barriers of the coordination service that ``jax.distributed`` runs (the
service JAX itself starts up with), not through device collectives:

* every operation has a timeout (a rank that died or hangs makes the others
  raise :class:`~cloudckpt.CheckpointError`, not hang);
* nothing is compiled or run on the accelerators, so a collective from an
  async save's background thread cannot interleave with the training's own
  device collectives (``multihost_utils.process_allgather`` would enqueue a
  computation on every device and has no timeout);
* payloads are bytes (JSON), never pickle.

Each collective ``n`` of a group writes under ``<namespace>/<n>/<rank>``, meets
at barrier ``<namespace>/<n>``, then reads; a rank deletes its keys of
collective ``n - 1`` once it has passed barrier ``n`` (every rank has then
read them), so the store holds at most two collectives' payloads. Every rank
must make the same collectives in the same order (as with torch.distributed).

This uses the coordination-service client of ``jax.distributed``
(``jax._src.distributed.global_state.client``, as orbax does): JAX has no
public API for it.

Example:
    >>> group_for()   # jax.distributed not initialized: one process
    SingleProcess()
"""

from __future__ import annotations

import threading
from typing import Any

import jax

from cloudckpt.distributed.group import DEFAULT_TIMEOUT, SINGLE, JsonCollectives, register_provider
from cloudckpt.errors import CheckpointError

__all__ = ["JaxGroup", "group_for"]

_GROUPS: dict[tuple[int, float], JaxGroup] = {}
_LOCK = threading.Lock()


def _client() -> Any:
    """The coordination-service client of ``jax.distributed``, or None when it is not initialized."""
    try:
        from jax._src.distributed import global_state
    except ImportError:  # pragma: no cover - a jax without it
        return None
    return getattr(global_state, "client", None)


class JaxGroup(JsonCollectives):
    """All processes of a ``jax.distributed`` job as a cloudckpt group (see the module docs).

    ``timeout`` (seconds) bounds every collective; ``namespace`` prefixes its
    keys in the coordination service and must be the same on every process
    (and differ between groups used at the same time).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, *, namespace: str = "cloudckpt") -> None:
        client = _client()
        if client is None:
            raise ValueError("jax.distributed is not initialized: call jax.distributed.initialize() first")
        self._client = client
        self.rank = int(jax.process_index())
        self.size = int(jax.process_count())
        self.timeout = float(timeout)
        self._ns = namespace
        self._seq = 0
        self._forks = 0
        self._stale: list[str] = []  # this rank's keys of the previous collective
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JaxGroup(rank={self.rank}, size={self.size}, timeout={self.timeout:g}s)"

    def _fail(self, what: str, exc: BaseException) -> CheckpointError:
        return CheckpointError(
            f"rank {self.rank} of {self.size}: the collective '{what}' failed ({type(exc).__name__}: {exc}); "
            f"another process died, failed or did not answer within {self.timeout:g} s. Nothing was committed "
            "unless the caller says so; restart the job (it resumes from the latest committed checkpoint)"
        )

    def _exchange(self, what: str, data: bytes | None) -> str:
        """One step of the protocol: write ``data`` (if any) under this
        collective's prefix, meet every rank at its barrier, forget this
        rank's keys of the previous collective. Returns the prefix."""
        n = self._seq
        self._seq += 1
        prefix = f"{self._ns}/{n}/"
        ms = max(1, int(self.timeout * 1000))
        written: list[str] = []
        try:
            if data is not None:
                key = f"{prefix}{self.rank}"
                self._client.key_value_set_bytes(key, bytes(data))
                written.append(key)
            self._client.wait_at_barrier(f"{self._ns}/{n}", ms)
        except Exception as exc:
            self._stale.extend(written)
            raise self._fail(what, exc) from None
        for key in self._stale:  # every rank has passed barrier n: it has read collective n - 1
            try:
                self._client.key_value_delete(key)
            except Exception:  # pragma: no cover - garbage only
                pass
        self._stale = written
        return prefix

    def all_gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's bytes, in rank order."""
        with self._lock:
            prefix = self._exchange("all_gather", data)
            try:
                got = dict(self._client.key_value_dir_get_bytes(prefix))
            except Exception as exc:
                raise self._fail("all_gather", exc) from None
        missing = [r for r in range(self.size) if f"{prefix}{r}" not in got]
        if missing:
            raise self._fail("all_gather", LookupError(f"no value from ranks {missing}"))
        return [bytes(got[f"{prefix}{r}"]) for r in range(self.size)]

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        """Rank ``src``'s bytes on every rank."""
        if self.rank == src and data is None:
            raise ValueError("the source rank of a broadcast must give bytes")
        with self._lock:
            prefix = self._exchange("broadcast", data if self.rank == src else None)
            if self.rank == src:
                assert data is not None
                return bytes(data)
            try:
                return bytes(self._client.blocking_key_value_get_bytes(f"{prefix}{src}", max(1, int(self.timeout * 1000))))
            except Exception as exc:
                raise self._fail("broadcast", exc) from None

    def all_reduce_max(self, value: int) -> int:
        """The largest ``value`` over the ranks."""
        return max(int(v) for v in self.all_gather_json(int(value)))

    def fork(self) -> JaxGroup:
        """A second group of the same processes with keys of its own (every
        rank calls it, in the same order), for collectives that may run while
        another thread uses this one."""
        with self._lock:
            k = self._forks
            self._forks += 1
        return JaxGroup(self.timeout, namespace=f"{self._ns}/f{k}")


def group_for(timeout: float | None = None) -> Any:
    """The cloudckpt group of all processes of the ``jax.distributed`` job,
    or the single-process group when it is not initialized or has one
    process. ``timeout``: seconds per collective (default
    ``CLOUDCKPT_COLLECTIVE_TIMEOUT`` or 600).

    One group per timeout, shared by the callers of this process.
    """
    t = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    client = _client()
    if client is None or jax.process_count() == 1:
        return SINGLE
    key = (id(client), t)
    with _LOCK:
        group = _GROUPS.get(key)
        if group is None:
            group = JaxGroup(t, namespace=f"cloudckpt/t{t:g}")
            _GROUPS[key] = group
    return group


def _provide(process_group: Any, timeout: float) -> Any:
    """resolve_group's provider: the job's group for None (a jax.distributed
    job has no process-group objects of its own)."""
    return group_for(timeout) if process_group is None else None


register_provider("jax", _provide)
