"""Local-disk backend: plain ``os`` calls, made durable with fsync.

fsspec's local filesystem never fsyncs and has no create-only write, so local
disk gets its own small backend. Every path here is absolute.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from cloudckpt.storage import mapping
from cloudckpt.storage.backends.base import BackendBase
from cloudckpt.storage.mapping import libc
from cloudckpt.storage.protocol import Buffer, Capabilities, WriteMode

__all__ = ["LocalBackend"]

_IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 1024)
_WRITEBACK_PIECE = 8 * 2**20  # start writeback after every this many bytes (see _writeback)


_sync_file_range: Callable[[int, int, int, int], int] | None = libc(
    "sync_file_range", [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint], ctypes.c_int
)
_SYNC_FILE_RANGE_WRITE = 2


def _writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` of ``fd`` to disk, without
    waiting (``SYNC_FILE_RANGE_WRITE``). A save writes far less than the
    kernel's dirty-page threshold, so without this nothing reaches the disk
    before the fsync and copying into the page cache and writing to the
    disk take turns; with it they overlap. Only a head start: durability is
    still the fsync's job, so a failure here is ignored."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


# renameat2(olddirfd, oldpath, newdirfd, newpath, flags) with RENAME_NOREPLACE: an
# atomic rename that refuses an existing target (Python's os.rename replaces it)
_renameat2: Callable[[int, bytes, int, bytes, int], int] | None = libc(
    "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint], ctypes.c_int
)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
# link() errors that mean "this filesystem has no hard links", not "this went wrong"
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}
# link() errors after which a copy of the bytes will do: no hard links here, or across filesystems
_COPY_BYTES_INSTEAD = _NO_HARD_LINKS | {errno.EXDEV}
# copy_file_range() errors that mean "not between these files": copy through user space
_NO_COPY_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.EPERM}
_COPY_PIECE = 1 << 30  # bytes asked of one copy_file_range call


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` atomically unless ``dst`` exists (FileExistsError).

    Raises OSError(ENOTSUP) where the system has no such rename: then a
    create-only write cannot be made atomic on this filesystem."""
    if _renameat2 is None:
        raise OSError(errno.ENOTSUP, "no renameat2(RENAME_NOREPLACE) on this system", dst)
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def _write_all(fd: int, buffers: Sequence[Buffer], *, early: bool = False) -> int:
    """Write ``buffers`` back to back with vectored writes (``writev``, up to
    ``_IOV_MAX`` buffers a call, so thousands of small tensors cost no join
    and few calls); with ``early``, start the writeback of every
    ``_WRITEBACK_PIECE`` bytes as soon as they are written."""
    views: list[memoryview] = []
    for buf in buffers:
        view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)
        if early:  # large buffers in pieces, so that writeback starts within each
            views.extend(view[at : at + _WRITEBACK_PIECE] for at in range(0, view.nbytes, _WRITEBACK_PIECE))
        elif view.nbytes:
            views.append(view)
    total = 0
    kicked = 0  # bytes whose writeback has been started
    k = 0  # first view not yet written
    while k < len(views):
        batch: list[memoryview] = []
        size = 0
        while k + len(batch) < len(views) and len(batch) < _IOV_MAX and size < _WRITEBACK_PIECE:
            batch.append(views[k + len(batch)])
            size += batch[-1].nbytes
        n = os.writev(fd, batch)
        if n == 0:
            raise OSError(f"writev wrote nothing of {size} bytes")
        total += n
        while n:  # a short write: drop what went, keep the rest of a view
            if n >= views[k].nbytes:
                n -= views[k].nbytes
                k += 1
            else:
                views[k] = views[k][n:]
                n = 0
        if early and total - kicked >= _WRITEBACK_PIECE:
            _writeback(fd, kicked, total - kicked)
            kicked = total
    return total


def _preadv_all(fd: int, views: Sequence[memoryview], offset: int) -> int:
    """``preadv`` into ``views`` from ``offset`` until they are full or the file ends."""
    pending = list(views)
    done = 0
    k = 0  # first view not yet full
    while k < len(pending):
        n = os.preadv(fd, pending[k : k + _IOV_MAX], offset + done)
        if n == 0:
            return done
        done += n
        while n:
            v = pending[k]
            if n >= v.nbytes:
                n -= v.nbytes
                k += 1
            else:
                pending[k] = v[n:]
                n = 0
    return done


class LocalBackend(BackendBase):
    """Objects are files; keys are paths below a root directory.

    Example:
        >>> import os, tempfile
        >>> b = LocalBackend(fsync=False); path = os.path.join(tempfile.mkdtemp(), "d", "k")
        >>> b.put(path, [b"ab", b"c"]), b.get(path, 1), b.capabilities.gathers_writes
        (3, b'bc', True)
    """

    name = "local"
    capabilities = Capabilities(
        create_only=True,  # link() or renameat2(RENAME_NOREPLACE) of an fsynced temp file
        scattered_reads=True,  # preadv
        write_copies=False,  # os.write from the caller's buffers
        gathers_writes=True,  # writev: many small buffers, no join, few calls
        maps_objects=mapping.MAPS_OBJECTS,
        places_mappings=mapping.PLACES_MAPPINGS,
        temporaries=True,
        remote=False,
        server_copy=True,  # a hard link (a byte copy in the kernel where links cannot be made)
    )
    #: what fsspec's local filesystem takes (a local path accepts and ignores these)
    OPTIONS = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths", "auto_mkdir"})

    def __init__(self, *, fsync: bool = True) -> None:
        self.fsync = fsync
        self._dirty_dirs: set[str] = set()
        self._known_dirs: set[str] = set()
        self._lock = threading.Lock()

    # -- helpers --------------------------------------------------------
    def _ensure_parent(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent in self._known_dirs:
            return
        missing = []
        d = parent
        while d and not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        os.makedirs(parent, exist_ok=True)
        with self._lock:
            self._known_dirs.add(parent)
            # a new directory's entry lives in its parent: those must be synced too
            for m in missing:
                self._dirty_dirs.add(os.path.dirname(m))

    def _mark_dirty(self, directory: str) -> None:
        with self._lock:
            self._dirty_dirs.add(directory)

    @staticmethod
    def _fsync_dir(directory: str) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- verbs ----------------------------------------------------------
    def get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        with open(path, "rb", buffering=0) as f:
            if start:
                f.seek(start)
            if end is None:
                return f.read()
            # no buffer of the asked size for a smaller file (a bounded read asks for a limit)
            n = min(end, os.fstat(f.fileno()).st_size) - (start or 0)
            return f.read(n) if n > 0 else b""

    def get_into(self, path: str, views: Sequence[memoryview], start: int = 0) -> int:
        """Fill ``views`` back to back from offset ``start`` of the file with
        positioned vectored reads (``preadv``): the bytes go straight from the
        page cache into the views, with no intermediate buffer. Returns the
        bytes read (less than the views hold if the file is shorter)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            return _preadv_all(fd, [v for v in views if v.nbytes], start)
        finally:
            os.close(fd)

    def map_private(self, path: str, size: int) -> tuple[memoryview, int]:
        return mapping.map_private(path, size)

    def reserve_mapping(self, size: int) -> mmap.mmap:
        return mapping.reserve_mapping(size)

    def map_private_at(self, region: mmap.mmap, offset: int, path: str, size: int) -> int:
        return mapping.map_private_at(region, offset, path, size)

    def put(
        self, path: str, buffers: Sequence[Buffer], mode: WriteMode = WriteMode.OVERWRITE, *, atomic: bool = False
    ) -> int:
        """Overwrite: write in place (``atomic``: a temp file renamed over the
        object); create-only: see :meth:`_put_create`."""
        if mode is WriteMode.CREATE_ONLY:
            return self._put_create(path, _joined(buffers))
        if atomic:
            return self._put_atomic(path, _joined(buffers))
        return self._put(path, buffers)

    def _put(self, path: str, buffers: Sequence[Buffer]) -> int:
        self._ensure_parent(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_nlink > 1:
                # a hard link (:meth:`copy`) shares its bytes with another object:
                # writing in place would change both, so the write makes a file of its own
                os.close(fd)
                fd = -1
                _unlink_quiet(path)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            else:
                os.ftruncate(fd, 0)
            n = _write_all(fd, buffers, early=self.fsync)
            if self.fsync:
                os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        self._mark_dirty(os.path.dirname(path))
        return n

    def copy(self, src: str, dst: str) -> int | None:
        """``dst`` becomes a hard link of ``src`` (no byte is copied; ``dst``
        replaced atomically if it exists); where links cannot be made (another
        filesystem, or one without hard links) a copy of the bytes made in the
        kernel (``copy_file_range``) into a temp file renamed over ``dst``.
        Returns None: local disk keeps no checksum. The new directory entry is
        made durable by :meth:`barrier`, as a write's is.

        Example:
            >>> import os, tempfile
            >>> b = LocalBackend(fsync=False); d = tempfile.mkdtemp()
            >>> b.put(f"{d}/a", [b"abc"]); b.copy(f"{d}/a", f"{d}/new/b"), b.get(f"{d}/new/b")
            3
            (None, b'abc')
            >>> os.stat(f"{d}/new/b").st_ino == os.stat(f"{d}/a").st_ino
            True
        """
        if not os.path.isfile(src):
            if os.path.lexists(src):
                raise IsADirectoryError(errno.EISDIR, "not an object", src)
            raise FileNotFoundError(errno.ENOENT, "no such object", src)
        self._ensure_parent(dst)
        tmp: str | None = None
        try:
            try:
                os.link(src, dst)  # the common case: dst is new
            except FileExistsError:
                tmp = f"{dst}.tmp-{uuid.uuid4().hex[:12]}"
                self._link_or_copy(src, tmp)
                os.replace(tmp, dst)
            except OSError as exc:
                if exc.errno not in _COPY_BYTES_INSTEAD:
                    raise
                tmp = f"{dst}.tmp-{uuid.uuid4().hex[:12]}"
                self._copy_bytes(src, tmp)
                os.replace(tmp, dst)
        finally:
            if tmp is not None:
                # also after a rename of a link over a link of the same file, which does nothing
                _unlink_quiet(tmp)
        self._mark_dirty(os.path.dirname(dst))
        return None

    def _link_or_copy(self, src: str, dst: str) -> None:
        """A hard link ``dst`` of ``src``, or a copy of its bytes where links cannot be made."""
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in _COPY_BYTES_INSTEAD:
                raise
            self._copy_bytes(src, dst)

    def _copy_bytes(self, src: str, dst: str) -> None:
        """Copy the bytes of ``src`` into a new file ``dst`` (fsynced where the
        backend fsyncs): ``copy_file_range`` (in the kernel, or a reflink on
        filesystems that share extents), else ``shutil``'s copy."""
        try:
            with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
                done = False
                size = os.fstat(fin.fileno()).st_size
                if hasattr(os, "copy_file_range"):
                    try:
                        copied = 0
                        while n := os.copy_file_range(fin.fileno(), fout.fileno(), _COPY_PIECE):
                            copied += n
                        # (some filesystems answer 0 at once: copy through user space then)
                        done = copied == size
                    except OSError as exc:
                        if exc.errno not in _NO_COPY_RANGE:
                            raise
                if not done:  # from the start again: whatever copy_file_range wrote is overwritten
                    fin.seek(0)
                    fout.seek(0)
                    fout.truncate()
                    shutil.copyfileobj(fin, fout, 8 << 20)
                if os.fstat(fout.fileno()).st_size != size:
                    raise OSError(errno.EIO, f"copied {os.fstat(fout.fileno()).st_size} of {size} bytes", src)
                if self.fsync:
                    os.fsync(fout.fileno())
        except BaseException:
            _unlink_quiet(dst)
            raise

    def _write_temp(self, path: str, data: Buffer) -> str:
        self._ensure_parent(path)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, [data])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quiet(tmp)
            raise
        os.close(fd)
        return tmp

    def _put_atomic(self, path: str, data: Buffer) -> int:
        """Whole-object replace: temp file, fsync, ``os.replace``, fsync the directory."""
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        self._fsync_dir(os.path.dirname(path))
        return memoryview(data).nbytes

    def _put_create(self, path: str, data: Buffer) -> int:
        """Create-only: the complete, fsynced file appears atomically or not at all.

        ``link()`` of an fsynced temp file; on a filesystem without hard links,
        ``renameat2(RENAME_NOREPLACE)``; where neither exists the write fails
        (OSError ENOTSUP) rather than make a partial file visible. Raises
        FileExistsError if ``path`` exists.
        """
        if os.path.lexists(path):
            raise FileExistsError(path)
        tmp: str | None = self._write_temp(path, data)
        assert tmp is not None
        try:
            try:
                os.link(tmp, path)  # atomic, fails if path exists
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise  # e.g. the temp file was removed: nothing was made visible
                try:
                    _rename_noreplace(tmp, path)
                except OSError as exc2:
                    if exc2.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise OSError(
                            errno.ENOTSUP,
                            "this filesystem has neither hard links nor an atomic rename that refuses an existing "
                            "file: a create-only commit cannot be made here without a moment where a partial "
                            "file is visible; use another filesystem",
                            path,
                        ) from None
                    raise
                tmp = None  # renamed: nothing to remove
        finally:
            if tmp is not None:
                _unlink_quiet(tmp)
        self._fsync_dir(os.path.dirname(path))
        return memoryview(data).nbytes

    def size(self, path: str) -> int:
        st = os.stat(path)
        if not os.path.isfile(path):
            raise IsADirectoryError(path)
        return st.st_size

    def exists(self, path: str) -> bool:
        return os.path.isfile(path)

    def stat(self, path: str) -> tuple[int, float | None]:
        """Size and modification time of the file (one ``stat``)."""
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(path)
        return st.st_size, st.st_mtime

    def list_dir(self, path: str) -> tuple[dict[str, int], list[str]]:
        files: dict[str, int] = {}
        dirs: list[str] = []
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            return files, dirs
        except NotADirectoryError:
            raise
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    dirs.append(e.name)
                elif e.is_file(follow_symlinks=False):
                    files[e.name] = e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # removed since the directory was read (a temp file renamed, a retired checkpoint)
        return files, sorted(dirs)

    def find(self, path: str) -> dict[str, int]:
        out: dict[str, int] = {}
        if not os.path.isdir(path):
            return out
        for root, _dirs, names in os.walk(path):
            for n in names:
                full = os.path.join(root, n)
                try:
                    out[os.path.relpath(full, path).replace(os.sep, "/")] = os.stat(full).st_size
                except FileNotFoundError:
                    pass
        return out

    def delete(self, paths: Iterable[str]) -> None:
        dirs = set()
        for p in paths:
            _unlink_quiet(p)
            dirs.add(os.path.dirname(p))
        for d in dirs:
            self._fsync_dir(d)

    def delete_prefix(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)
        self._fsync_dir(os.path.dirname(path.rstrip("/")))

    def list_temps(self, path: str) -> list[tuple[str, int, float]]:
        """The temp files of write-temp-then-rename in ``path``: (name, size, age in seconds)."""
        out: list[tuple[str, int, float]] = []
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return out
        now = time.time()
        for e in entries:
            if not (_TEMP_RE.search(e.name) and e.is_file(follow_symlinks=False)):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # its write finished (renamed) meanwhile
            out.append((e.name, st.st_size, max(0.0, now - st.st_mtime)))
        return out

    def clean_temps(self, path: str, min_age: float) -> list[str]:
        """Remove the temp files a killed write-temp-then-rename left in ``path``:
        those last modified at least ``min_age`` seconds ago. A younger one may
        belong to a write still in flight (another process's state file)."""
        removed: list[str] = []
        for name, _size, age in self.list_temps(path):
            if age >= min_age:
                full = os.path.join(path, name)
                _unlink_quiet(full)
                removed.append(full)
        return removed

    def barrier(self) -> None:
        """Make every directory entry created since the last barrier durable."""
        with self._lock:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        if self.fsync:
            for d in sorted(dirs, key=len, reverse=True):
                self._fsync_dir(d)


    def same_store(self, other: object) -> bool:
        """Any other local-disk backend: one machine's files (a copy between two
        filesystems copies the bytes, see :meth:`copy`).

        Example:
            >>> LocalBackend().same_store(LocalBackend(fsync=False))
            True
        """
        return isinstance(other, LocalBackend)

    def accepted_options(self) -> frozenset[str] | None:
        return self.OPTIONS

    def filesystem_name(self) -> str:
        return "local disk"


_TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{12}$")


def _joined(buffers: Sequence[Buffer]) -> Buffer:
    """One buffer: the only one as it is, several joined (a temp-then-rename write is one small object)."""
    return buffers[0] if len(buffers) == 1 else b"".join(buffers)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

