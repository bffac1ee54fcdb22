"""What the project's command-line programs share: --version and -v, output paths checked before
long work starts, files written whole, progress that suits where stderr goes.

Used by baby-llama and graphcore-dump (and any CLI built on graphcore): each problem becomes a
`CliError` with a one-line message, which the program prints as `prog: message` with exit
status 1 instead of a traceback.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from . import __version__
from .files import drop_stdout, write_bytes

log = logging.getLogger("graphcore")


class CliError(Exception):
    """A problem to report in one line (exit status 1)."""


def add_common_arguments(parser) -> None:
    """--version and -v/--verbose (repeat for more: INFO, then DEBUG of the graphcore logger)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s (graphcore {__version__})")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="say what is happening on stderr (kernels compiling, rendering); -vv for more")


def setup_logging(verbose: int) -> None:
    """graphcore's log messages on stderr: quiet by default, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def check_output_file(path: str, option: str) -> str:
    """Fail now, not after the work, if `path` cannot be written: its folder must exist and be
    writable, and it must not be a folder itself."""
    if not path:
        raise CliError(f"{option}: empty path")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f"{option} {path}: is a folder; give a file name")
    if not os.path.isdir(folder):
        raise CliError(f"{option} {path}: the folder {folder} does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CliError(f"{option} {path}: not writable")
    if not os.path.exists(path) and not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: cannot create files in {folder} (permission denied)")
    return path


def check_output_folder(path: str, option: str) -> str:
    """A folder that exists and is writable, or can be made (its parent exists and is writable)."""
    if not path:
        raise CliError(f"{option}: empty path")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise CliError(f"{option} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CliError(f"{option} {path}: not writable")
        return path
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CliError(f"{option} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: cannot create it in {parent} (permission denied)")
    return path


def write_stdout(data: bytes, binary_format: str | None = None) -> None:
    """Bytes to standard output; a binary format is refused on a terminal (give -o), a reader
    that closed the pipe (`| head`) ends the program quietly, and a failed write (a full disk)
    is a CliError."""
    if binary_format and sys.stdout.isatty():
        raise CliError(f"--format {binary_format} is binary: refusing to write it to a terminal; give -o FILE "
                       f"or redirect the output")
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except BrokenPipeError:
        drop_stdout()
    except OSError as e:
        drop_stdout()
        raise CliError(f"cannot write to standard output: {e.strerror or e}") from None


class Progress:
    """Progress of `total` steps on stderr. On a terminal one line redrawn in place (at most 10
    times a second); elsewhere (a file, a pipe, CI logs) a plain line at most every `every`
    seconds and at the end, so a log does not fill with carriage returns."""

    def __init__(self, total: int, label: str = "", stream=None, every: float = 5.0):
        self.total, self.label, self.every = total, label, every
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.last = -1e9
        self.done = 0

    def eta(self) -> str:
        el = time.perf_counter() - self.t0
        if self.done <= 0 or self.done >= self.total:
            return ""
        s = el / self.done * (self.total - self.done)
        return f"  eta {int(s // 60)}:{int(s % 60):02d}"

    def update(self, done: int, info: str = "") -> None:
        self.done = done
        now = time.perf_counter()
        final = done >= self.total
        if not final and now - self.last < (0.1 if self.tty else self.every):
            return
        self.last = now
        if self.tty:
            width = 30
            fill = width * done // max(self.total, 1)
            self.stream.write(f"\r{self.label}[{'#' * fill}{'-' * (width - fill)}] {done}/{self.total}  {info}"
                              f"{self.eta()}\x1b[K")
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(f"{self.label}{done}/{self.total}  {info}{self.eta()}\n")
        self.stream.flush()


def write_output(path: str, data: bytes, option: str = "--output") -> None:
    """Write `data` to `path` whole (graphcore.files.write_bytes: atomic for regular files, the
    mode kept or the umask's, symlinks followed, FIFOs and devices written directly)."""
    try:
        write_bytes(path, data)
    except OSError as e:
        raise CliError(f"{option} {path}: cannot write: {e.strerror or e}") from None
