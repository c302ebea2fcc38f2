"""The ``checkpoint`` state file, in TensorFlow's text format.

A human-readable cache of a manager's state, kept so that people and tools
that read TF's ``checkpoint`` file keep working::

    model_checkpoint_path: "ckpt-3"
    all_model_checkpoint_paths: "ckpt-2"
    all_model_checkpoint_paths: "ckpt-3"
    all_model_checkpoint_timestamps: 1764186000.25
    all_model_checkpoint_timestamps: 1764186060.5
    last_preserved_timestamp: 1764185999.0

Paths are relative to the directory. It is never the truth: the manifests
are. A missing, stale or unparsable state file is rebuilt from them.

Example:
    >>> s = CheckpointState("ckpt-2", ["ckpt-1", "ckpt-2"], [1.5, 2.5], 0.5)
    >>> parse_state(format_state(s)) == s
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from cloudckpt.errors import ObjectNotFoundError
from cloudckpt.layout.names import STATE_KEY
from cloudckpt.storage import Storage

__all__ = ["CheckpointState", "format_state", "parse_state", "read_state_file", "write_state_file"]


@dataclass
class CheckpointState:
    """The fields of TF's CheckpointState proto that the manager keeps."""

    model_checkpoint_path: str | None
    all_model_checkpoint_paths: list[str] = field(default_factory=list)
    all_model_checkpoint_timestamps: list[float] = field(default_factory=list)
    last_preserved_timestamp: float | None = None


def _quote(s: str) -> str:
    # protobuf text format strings: JSON escaping of quotes and backslashes is
    # a compatible subset; non-ASCII stays UTF-8 (protobuf has no \u escapes)
    return json.dumps(s, ensure_ascii=False)


def _float(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return repr(float(x))


def format_state(state: CheckpointState) -> str:
    """The text of a state file.

    Example:
        >>> print(format_state(CheckpointState("ckpt-1", ["ckpt-1"], [10.0], 9.0)), end="")
        model_checkpoint_path: "ckpt-1"
        all_model_checkpoint_paths: "ckpt-1"
        all_model_checkpoint_timestamps: 10.0
        last_preserved_timestamp: 9.0
    """
    lines = []
    if state.model_checkpoint_path is not None:
        lines.append(f"model_checkpoint_path: {_quote(state.model_checkpoint_path)}")
    for p in state.all_model_checkpoint_paths:
        lines.append(f"all_model_checkpoint_paths: {_quote(p)}")
    for t in state.all_model_checkpoint_timestamps:
        lines.append(f"all_model_checkpoint_timestamps: {_float(t)}")
    if state.last_preserved_timestamp is not None:
        lines.append(f"last_preserved_timestamp: {_float(state.last_preserved_timestamp)}")
    return "\n".join(lines) + "\n"


def parse_state(text: str) -> CheckpointState:
    """Parse a state file; ValueError if it is malformed.

    Example:
        >>> parse_state('model_checkpoint_path: "ckpt-7"\\n').model_checkpoint_path
        'ckpt-7'
    """
    state = CheckpointState(None)
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            raise ValueError(f"line {n}: expected 'field: value', got {raw!r}")
        key, value = (x.strip() for x in line.split(":", 1))
        if key in ("model_checkpoint_path", "all_model_checkpoint_paths"):
            if not (value.startswith('"') and value.endswith('"')) and not (
                value.startswith("'") and value.endswith("'")
            ):
                raise ValueError(f"line {n}: {key} must be a quoted string")
            if value.startswith("'"):
                value = '"' + value[1:-1].replace('"', '\\"') + '"'
            try:
                s = json.loads(value)
            except ValueError:
                raise ValueError(f"line {n}: bad string {value!r}") from None
            if key == "model_checkpoint_path":
                state.model_checkpoint_path = s
            else:
                state.all_model_checkpoint_paths.append(s)
        elif key in ("all_model_checkpoint_timestamps", "last_preserved_timestamp"):
            try:
                x = float(value)
            except ValueError:
                raise ValueError(f"line {n}: {key} must be a number") from None
            if key == "last_preserved_timestamp":
                state.last_preserved_timestamp = x
            else:
                state.all_model_checkpoint_timestamps.append(x)
        else:
            raise ValueError(f"line {n}: unknown field {key!r}")
    if state.model_checkpoint_path is None:
        raise ValueError("model_checkpoint_path is missing")
    if state.all_model_checkpoint_timestamps and len(state.all_model_checkpoint_timestamps) != len(
        state.all_model_checkpoint_paths
    ):
        raise ValueError("all_model_checkpoint_timestamps does not match all_model_checkpoint_paths")
    return state


def read_state_file(storage: Storage) -> CheckpointState | None:
    """The state file of a directory, or None if it is missing or unparsable.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> s = open_storage("memory://doc-statefile")
        >>> write_state_file(s, CheckpointState("ckpt-1", ["ckpt-1"], [1.0]))
        >>> read_state_file(s).model_checkpoint_path
        'ckpt-1'
    """
    try:
        data = storage.read(STATE_KEY)
    except ObjectNotFoundError:
        return None
    try:
        return parse_state(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def write_state_file(storage: Storage, state: CheckpointState) -> None:
    """Replace the state file in one whole-object write (atomic on every backend).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> write_state_file(open_storage("memory://doc-statefile-w"), CheckpointState("ckpt-2"))
    """
    storage.write(STATE_KEY, format_state(state).encode(), atomic=True)
