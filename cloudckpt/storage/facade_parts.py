"""What the :class:`~cloudckpt.storage.Storage` facade supplies to the mixins that hold some of its verbs.

:class:`~cloudckpt.storage.mapped.MappedReads` (memory mappings) and
:class:`~cloudckpt.storage.leftovers.Leftovers` (what killed writers leave)
are written against these members; ``Storage`` defines every one of them.

Example:
    >>> from cloudckpt.storage import Storage
    >>> issubclass(Storage, FacadeParts)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from cloudckpt.storage.session import Session

__all__ = ["FacadeParts"]

T = TypeVar("T")
R = TypeVar("R")


class FacadeParts:
    """The members of :class:`~cloudckpt.storage.Storage` its mixins use (see the module docstring).

    Example:
        >>> FacadeParts().url_for("k")
        Traceback (most recent call last):
        ...
        NotImplementedError: the Storage facade supplies url_for
    """

    _s: Session
    _root: str

    def _path(self, key: str) -> str:
        raise NotImplementedError("the Storage facade supplies _path")

    def _dir_path(self, prefix: str) -> str:
        raise NotImplementedError("the Storage facade supplies _dir_path")

    def _request(self, op: str, key: str, fn: Callable[[], T], nbytes: int = 0) -> T:
        raise NotImplementedError("the Storage facade supplies _request")

    def url_for(self, key: str) -> str:
        raise NotImplementedError("the Storage facade supplies url_for")

    def size(self, key: str) -> int:
        raise NotImplementedError("the Storage facade supplies size")

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, limit: int | None = None) -> list[R]:
        raise NotImplementedError("the Storage facade supplies map")
