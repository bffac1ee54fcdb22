"""Writing output files without clobbering what the path is.

    write_bytes(path, data)

- a symlink is followed: its target is written, the link stays;
- a regular file, or no file yet, is written atomically: a temporary file beside it, renamed over
  it, so a reader (or a crash) sees the old bytes or the new ones, never half. An existing file
  keeps its mode (and, where allowed, its owner); a new one gets 0666 less the umask, as open()
  would give it. A file with several hard links, or in a directory where no temporary file can be
  made, is rewritten in place instead (the links stay links);
- anything else (a FIFO, a character device such as /dev/null or /dev/stdout) is written directly.

Errors are OSErrors naming `path`, never the temporary file. drop_stdout() is for command-line
tools whose standard output failed.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:          # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)                            # elsewhere: the classic read-by-setting
    os.umask(mask)
    return mask


def _direct(target: str, data: bytes) -> None:
    with open(target, "wb") as f:
        f.write(data)


def write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` as the module's documentation says."""
    path = os.fspath(path)
    try:
        target = os.path.realpath(path)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            st = None
        if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_nlink > 1):
            _direct(target, data)
            return
        d, base = os.path.split(target)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d)
        except PermissionError:
            if st is None:
                raise
            _direct(target, data)                     # a writable file in a read-only directory
            return
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if st is not None:
                try:
                    os.chown(tmp, st.st_uid, st.st_gid)
                except OSError:
                    pass
            os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        if e.filename == path:
            raise
        raise OSError(e.errno or errno.EIO, e.strerror or str(e), path) from None


def drop_stdout() -> None:
    """After writing to stdout failed (a full disk, a closed pipe): point it at /dev/null so that
    Python's flush at exit does not fail again with a traceback. For command-line tools."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass
