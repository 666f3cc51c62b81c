"""Two pieces of start-up work at once: one in a forked copy of this process, one in a thread.

A sweep whose jobs run in this process composes every job's config (Hydra, about 0.2 s a job,
pure Python) and imports torch and Lightning (about 3 s, mostly Python too). In one process
the interpreter lock runs them one after the other, and a thread gains nothing. A forked copy
has its own interpreter: it composes while this process imports, and sends the result back
pickled (a job config: 45 KB, 3 ms each way). The copy is forked before any thread starts,
so it inherits no lock another thread holds.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Forked(Generic[T]):
    """``work()`` running in a forked copy of this process; ``result()`` waits for its return
    value or raises its error here. Where this system cannot fork (or no process can be made
    now), ``work()`` runs in ``result()`` instead. Make it before this process starts a
    thread: the copy has only the calling thread, and a lock another one held stays held."""

    def __init__(self, work: Callable[[], T]) -> None:
        self._work = work
        self._pid: int | None = None
        if not hasattr(os, "fork"):
            return
        for stream in (sys.stdout, sys.stderr):  # else the copy would print them again
            stream.flush()
        self._read, write = os.pipe()
        try:
            self._pid = os.fork()
        except OSError:
            os.close(self._read)
            os.close(write)
            return
        if self._pid == 0:
            os.close(self._read)
            _serve(work, write)  # never returns
        os.close(write)

    def result(self) -> T:
        if self._pid is None:
            return self._work()
        chunks = []
        with os.fdopen(self._read, "rb") as pipe:
            while chunk := pipe.read(1 << 16):
                chunks.append(chunk)
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if status != 0:  # the copy died before its whole answer was sent (a signal): do it here
            return self._work()
        ok, value = pickle.loads(b"".join(chunks))
        if ok:
            return value
        raise _unpacked(value)


def _serve(work: Callable[[], Any], write: int) -> None:
    """In the copy: run ``work``, send ``(True, value)`` or ``(False, error)``, and leave
    without exit handlers, which belong to the process it was copied from."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the copy just stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    status = 0
    try:
        try:
            answer = pickle.dumps((True, work()), pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            answer = pickle.dumps((False, _packed(error)), pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write, "wb") as pipe:
            pipe.write(answer)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except BaseException:  # nothing may escape into the code it was copied from
        status = 1
    os._exit(status)


# An error as its class, args and attributes, with its cause and context: pickle alone would
# call the class with its args (Hydra's MissingConfigException takes more than its message)
# and drop the chain, which the one-line messages read (src/cli.py).
Packed = tuple[type, tuple, dict, "Packed | None", "Packed | None", bool]


def _packed(error: BaseException | None, depth: int = 0) -> Packed | None:
    if error is None or depth > 8:
        return None
    packed = (
        type(error),
        error.args,
        vars(error),
        _packed(error.__cause__, depth + 1),
        _packed(error.__context__, depth + 1),
        error.__suppress_context__,
    )
    try:
        pickle.dumps(packed, pickle.HIGHEST_PROTOCOL)
        return packed
    except Exception:  # an attribute that cannot travel: its type and message do
        return (RuntimeError, (f"{type(error).__name__}: {error}",), {}, None, None, False)


def _unpacked(packed: Packed | None) -> BaseException | None:
    if packed is None:
        return None
    kind, args, state, cause, context, suppress = packed
    error = kind.__new__(kind, *args)  # as raised: no __init__ runs again
    error.args = args
    error.__dict__.update(state)
    error.__cause__ = _unpacked(cause)
    error.__context__ = _unpacked(context)
    error.__suppress_context__ = suppress
    return error


class Threaded:
    """``work()`` in a daemon thread (an error exit does not wait for it); ``result()`` waits
    for it and raises its error here."""

    def __init__(self, work: Callable[[], None]) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                work()
            except BaseException as error:  # handed to result()
                self._error = error

        self._thread = threading.Thread(target=run, name="imports", daemon=True)
        self._thread.start()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
