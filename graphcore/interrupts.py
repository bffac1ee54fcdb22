"""Ctrl-C while numba compiles or loads a kernel: held until numba is done, then raised.

A KeyboardInterrupt that lands just after llvmlite has freed one of its C strings (its
OutputString.close frees, then forgets the pointer, with no try/finally between) leaves the
pointer to be freed again when the object is collected, and glibc then kills the process ("free():
double free detected") instead of Python raising. llvmlite makes such strings whenever numba
compiles, loads a kernel from its disk cache or asks for the CPU's name. numba compiles and
loads under its global compiler lock, which broadcasts the event "numba:compiler_lock"
when taken and when released; this listener swaps the SIGINT handler for one that only notes the
signal while the lock is held by the main thread (the only thread Python runs signal handlers in),
and on release puts the old handler back and calls it if a signal came; `with held:` does the same
around graphcore's own calls into numba's internals. A Ctrl-C during a cold start therefore lands
between two kernels (each compiles in at most seconds).
"""
from __future__ import annotations

import os
import signal
import threading

from numba.core import event


class _HoldSigint(event.Listener):
    """`held`: a numba event listener, and a context manager for graphcore's own calls into numba's
    internals outside the lock (ops/compiling.in_disk_cache asks numba's code generator for the CPU's
    name, through llvmlite strings whose release a KeyboardInterrupt can cut short)."""

    def __init__(self):
        self.depth = 0              # re-entrant: only the outermost take and release count
        self.saved = None           # the handler in place before the outermost take
        self.caught = None          # the frame of a SIGINT that came meanwhile

    def _note(self, signum, frame):
        self.caught = frame

    # The order of the statements matters: a signal is handled between any two of them. on_start swaps
    # the handler before it counts, and on_end puts it back after, so from the swap on a signal is only
    # noted, and a KeyboardInterrupt raised before the swap leaves nothing counted.
    def on_start(self, data=None):
        if threading.current_thread() is not threading.main_thread():
            return
        if self.depth == 0:
            try:
                self.saved = signal.signal(signal.SIGINT, self._note)
            except (ValueError, OSError):     # not the main interpreter, or no signals here
                self.saved = None
        self.depth += 1

    def on_end(self, data=None):
        if threading.current_thread() is not threading.main_thread() or self.depth == 0:
            return
        self.depth -= 1
        if self.depth or self.saved is None:
            return
        saved, self.saved = self.saved, None
        frame, self.caught = self.caught, None
        signal.signal(signal.SIGINT, saved)
        if frame is None:
            return
        if callable(saved):
            saved(signal.SIGINT, frame)         # Python's default handler raises KeyboardInterrupt here
        elif saved == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)  # what the signal would have done

    def __enter__(self):
        self.on_start()
        return self

    def __exit__(self, *exc):
        self.on_end()


held = _HoldSigint()
event.register("numba:compiler_lock", held)
