"""No-follow file access for what the companion owns: its files in the conf dir, the certs dir, the state file.

Whoever can write into those folders can plant a symlink, a FIFO or a device node where one of our files
should be. Following a link reads a secret into the conf dir, or chmods and writes outside our folders;
opening a FIFO blocks the loop for ever. So every read here opens the last path component with O_NOFOLLOW
and O_NONBLOCK and accepts only a regular file (checked again with fstat on the open descriptor), folders
are checked with lstat and changed only through a descriptor opened with O_NOFOLLOW, and writes rename a
fresh file over the entry (which replaces a link itself, never its target).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class UnsafeFile(OSError):
    """Something other than what the companion keeps there: a link, a FIFO, a device, a link leading away."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(errno.EINVAL, reason, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def kind(mode: int) -> str:
    """What an lstat/fstat mode is, in words for a log line."""
    return next((word for test, word in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else "unknown")


def regular_lstat(path: Path) -> os.stat_result:
    """lstat of `path`, which must be a regular file itself (not a link to one): cheap, never blocks."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(path, f"is {kind(st.st_mode)}, not a regular file")
    return st


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file `path`; UnsafeFile for anything else, without following or blocking.

    lstat first so a device is never even opened; fstat after opening so a swap in between is caught too.
    """
    regular_lstat(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(path, "is a symbolic link, not a regular file") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFile(path, f"is {kind(mode)}, not a regular file")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return data


def resolve_inside(path: Path, folders: Sequence[Path]) -> Path:
    """`path` with every link resolved, when that lands inside one of `folders` (given resolved); certbot's
    live/<name>/*.pem link into archive/<name>/, and no link may lead anywhere else."""
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(folder) for folder in folders):
        raise UnsafeFile(path, f"leads to {real}, outside {' and '.join(str(f) for f in folders)}")
    return real


def chmod_dir(path: Path, mode: int) -> None:
    """chmod a real directory; a link there is refused (UnsafeFile), so no target outside is ever touched."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # what O_NOFOLLOW|O_DIRECTORY says of a link
            found = os.lstat(path).st_mode
            if not stat.S_ISDIR(found):
                raise UnsafeFile(path, f"is {kind(found)}, not a directory") from None
        raise
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def real_dir(root: Path, relative: str, mode: int = 0o700) -> Path:
    """root/relative made of real directories below `root` (which the operator chose and may be a link).

    A missing level is created with `mode`; anything else in its place (a link, a file, a FIFO) is removed,
    the entry itself only, and replaced by a directory. The last level gets `mode` even when it existed.
    """
    path = root
    for part in Path(relative).parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            log.warning(
                "%s was %s, not the companion's folder; removed it (not what it points to)", path, kind(st.st_mode)
            )
            os.unlink(path)
            st = None
        if st is None:
            os.mkdir(path, mode)
    chmod_dir(path, mode)
    return path


def write_atomic(path: Path, content: str, mode: int = 0o644) -> None:
    """Write beside the target under a name nginx never includes, fsync, then rename over it.

    mkstemp creates the temporary file exclusively (never through a link) and the rename replaces the entry
    at `path`, so a link planted there is replaced, never written through. The mode is set on the open
    descriptor, not by name.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, mode)
            handle.write(content.encode("utf-8", "surrogateescape"))
            handle.flush()
            os.fsync(handle.fileno())
        _pause_for_tests()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pause_for_tests() -> None:
    """Test hook: COMPANION_TEST_APPLY_PAUSE=<seconds> holds each write between temp file and rename,
    so a fault-injection test can kill the companion in the middle of an apply."""
    pause = os.environ.get("COMPANION_TEST_APPLY_PAUSE")
    if pause:
        time.sleep(float(pause))
