"""Put a checkpoint's files in or out of the page cache, and check that it worked.

``evict(path)`` flushes everything (``os.sync()``, then ``fdatasync`` of each
file) and drops the pages of every file at/below ``path`` with
``posix_fadvise(POSIX_FADV_DONTNEED)``; ``warm(path)`` reads every file once.
Both then *count* the resident pages of every file: with ``mincore(2)`` on a
``PROT_READ`` mapping of the file (ctypes, Linux; mapping without touching
faults nothing in), and, where util-linux ``fincore`` is installed, with
``fincore`` as well. The returned dict says what was done and what was found,
so a load that was meant to be cold but was not (eviction refused, a tmpfs
directory, pages pinned by a mapping) is reported as such, never silently:

    {"action": "evict", "files": 3, "bytes": ..., "pages": 2048, "resident": 0,
     "resident_fincore": 0, "tool": "mincore+fincore", "ok": True, "error": None}

``ok`` is True for ``evict`` when no page of any file is resident, for
``warm`` when every page is.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import subprocess
from typing import Any

PAGE = mmap.PAGESIZE
_ONE = bytes(b & 1 for b in range(256))  # mincore: bit 0 of each byte = resident


def files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    out = []
    for root, _dirs, files in os.walk(path):
        out.extend(os.path.join(root, f) for f in files)
    return sorted(out)


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _LIBC = libc
    return _LIBC


def resident_pages_mincore(path: str) -> tuple[int, int]:
    """(resident pages, pages) of one file, by mincore(2) on an untouched read-only mapping."""
    size = os.path.getsize(path)
    pages = (size + PAGE - 1) // PAGE
    if size == 0:
        return 0, 0
    libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            e = ctypes.get_errno()
            raise OSError(e, f"mmap: {os.strerror(e)}", path)
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"mincore: {os.strerror(e)}", path)
            return bytes(vec).translate(_ONE).count(1), pages
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def resident_pages_fincore(paths: list[str]) -> int | None:
    """Resident pages of all ``paths`` by util-linux ``fincore`` (None if it is not installed)."""
    exe = shutil.which("fincore")
    if exe is None or not paths:
        return None if exe is None else 0
    total = 0
    for i in range(0, len(paths), 2000):  # keep argv short
        proc = subprocess.run([exe, "--json", "--bytes", "--output", "PAGES,SIZE,FILE", *paths[i:i + 2000]],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise OSError(f"fincore exited {proc.returncode}: {proc.stderr.strip()[:300]}")
        total += sum(int(e["pages"]) for e in json.loads(proc.stdout)["fincore"])
    return total


def residency(path: str) -> dict[str, Any]:
    """Pages and resident pages of every file at/below ``path`` (mincore, and fincore if installed)."""
    paths = files_under(path)
    out: dict[str, Any] = {"files": len(paths), "bytes": sum(os.path.getsize(p) for p in paths),
                           "pages": 0, "resident": None, "resident_fincore": None, "tool": None, "error": None}
    tools = []
    try:
        res = pages = 0
        for p in paths:
            r, n = resident_pages_mincore(p)
            res += r
            pages += n
        out["resident"], out["pages"] = res, pages
        tools.append("mincore")
    except (OSError, AttributeError) as exc:
        out["error"] = f"mincore: {exc}"
        out["pages"] = sum((os.path.getsize(p) + PAGE - 1) // PAGE for p in paths)
    try:
        fc = resident_pages_fincore(paths)
        if fc is not None:
            out["resident_fincore"] = fc
            tools.append("fincore")
            if out["resident"] is None:
                out["resident"] = fc
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        out["error"] = ((out["error"] + "; ") if out["error"] else "") + f"fincore: {exc}"
    out["tool"] = "+".join(tools) or None
    return out


def evict(path: str, attempts: int = 3) -> dict[str, Any]:
    """Drop every file at/below ``path`` from the page cache; report what is still resident."""
    errors: list[str] = []
    os.sync()
    state: dict[str, Any] = {}
    for _ in range(attempts):
        for p in files_under(path):
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError as exc:
                errors.append(f"open {p}: {exc}")
                continue
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError as exc:
                errors.append(f"fadvise {os.path.basename(p)}: {exc}")
            finally:
                os.close(fd)
        state = residency(path)
        if _all(state, 0):
            break
    return _result("evict", state, _all(state, 0), errors)


def warm(path: str) -> dict[str, Any]:
    """Read every file at/below ``path`` once (into the page cache); report what is resident."""
    errors: list[str] = []
    buf = bytearray(8 << 20)
    for p in files_under(path):
        try:
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        except OSError as exc:
            errors.append(f"read {p}: {exc}")
    state = residency(path)
    return _result("warm", state, _all(state, state.get("pages")), errors)


def _all(state: dict[str, Any], want: int | None) -> bool:
    """True if every residency count that was taken equals ``want`` (and at least one was taken)."""
    counts = [state.get(k) for k in ("resident", "resident_fincore") if state.get(k) is not None]
    return bool(counts) and want is not None and all(c == want for c in counts)


def _result(action: str, state: dict[str, Any], ok: bool, errors: list[str]) -> dict[str, Any]:
    if state.get("error"):
        errors.append(state["error"])
    out = {"action": action, **state, "ok": ok, "error": "; ".join(errors)[:1000] or None}
    if not ok and not out["error"]:
        if state.get("resident") is None:
            out["error"] = "page-cache residency could not be checked (neither mincore nor fincore worked)"
        elif action == "evict":
            out["error"] = f"{state['resident']} of {state['pages']} pages still resident after POSIX_FADV_DONTNEED"
        else:
            out["error"] = f"only {state['resident']} of {state['pages']} pages resident after reading every file"
    return out
