"""Tools for testing code that uses cloudckpt, and cloudckpt itself.

:mod:`cloudckpt.testing.faults` injects failures at the storage layer — a
process killed at its k-th request, transient errors on a fraction of
requests, latency, permanent errors — in this process or, through an
environment variable, in a child process.

Example:
    >>> import numpy as np, cloudckpt
    >>> from cloudckpt.testing import FaultInjector
    >>> with FaultInjector(fail_rate=1.0, errors=("503",), max_failures_per_request=1, seed=1) as faults:
    ...     url = cloudckpt.save("memory://doc-testing/ckpt-1", {"w": np.ones(2)})
    >>> faults.injected > 0 and faults.retried == faults.injected
    True
"""

from cloudckpt.testing.faults import (
    ENV_VAR,
    FaultInjector,
    Faults,
    InjectedCrash,
    ServiceUnavailableError,
    install_from_env,
    parse_spec,
)

__all__ = [
    "ENV_VAR",
    "FaultInjector",
    "Faults",
    "InjectedCrash",
    "ServiceUnavailableError",
    "install_from_env",
    "parse_spec",
]
