"""The storage layer: the only place where a byte leaves or enters the process.

:func:`open_storage` opens a directory on a backend (a local path,
``s3://``, ``gs://``, ``memory://`` or any fsspec URL) as a :class:`Storage`
(:mod:`~cloudckpt.storage.facade`) of verbs over relative keys. Backends
(:mod:`~cloudckpt.storage.backends`) implement the contract of
:mod:`~cloudckpt.storage.protocol`; :mod:`~cloudckpt.storage.retry`,
:mod:`~cloudckpt.storage.hooks`, :mod:`~cloudckpt.storage.redact`,
:mod:`~cloudckpt.storage.urls`, :mod:`~cloudckpt.storage.mapping` do one thing each.

Example:
    >>> s = open_storage("memory://doc-storage-example"); s.write("a/b.bin", b"hello")
    >>> s.read("a/b.bin"), s.write_if_absent("a/b.bin", b"other"), s.list_dir("a")
    (b'hello', False, ({'b.bin': 5}, []))
"""

from cloudckpt.storage.facade import Storage
from cloudckpt.storage.hooks import add_global_hook
from cloudckpt.storage.opener import open_storage, register_backend
from cloudckpt.storage.protocol import TEMP_MIN_AGE, Backend, Capabilities, IncompleteUpload, WriteMode
from cloudckpt.storage.redact import BARE_MIN, redact_text, secrets_of
from cloudckpt.storage.retry import RetryPolicy
from cloudckpt.storage.stats import RequestStats
from cloudckpt.storage.urls import join_url, validate_key

__all__ = [
    "Storage", "open_storage", "RetryPolicy", "RequestStats", "IncompleteUpload", "validate_key", "join_url",
    "add_global_hook", "TEMP_MIN_AGE", "Backend", "Capabilities", "WriteMode", "BARE_MIN", "redact_text",
    "secrets_of", "register_backend",
]  # fmt: skip
