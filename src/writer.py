"""An object's methods, called in a helper process, in order, while this process goes on.

Tracking uses it so training never waits on MLflow: the helper imports MLflow and
matplotlib while this process imports torch, and it creates runs, logs metrics, renders
figures and saves models while the next epochs or the next job train. Calls are
fire-and-forget (``send``) or answered (``send(..., reply=True)`` then ``result``); a failed
fire-and-forget call is kept by the served object and reported when asked.

A helper can be started before its arguments are known (``Writer.prestart``): it runs the
factory's ``prepare()`` (its imports) while the caller is still working them out, and the
next ``Writer`` of that factory takes it over.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class WriterError(RuntimeError):
    """A call failed in the helper process, or the helper is gone."""


class Writer:
    """The client end: ``Writer(factory, *args)`` starts a helper that builds
    ``factory(*args)`` and then serves its methods."""

    def __init__(self, factory: Callable[..., Any], *args: Any) -> None:
        self.process, self._conn = _SPARES.pop(factory, None) or _spawn(factory)
        try:
            _put(self._conn, args)
        except OSError:  # a spare that died meanwhile: start afresh
            _discard(self.process, self._conn)
            self.process, self._conn = _spawn(factory)
            _put(self._conn, args)
        self._calls = itertools.count(1)
        self._replies: dict[int, tuple[bool, Any]] = {}
        atexit.register(self.close)

    @staticmethod
    def prestart(factory: Callable[..., Any]) -> None:
        """Start the next ``Writer(factory, ...)``'s helper now: it runs ``factory.prepare()``
        while this process works out the arguments. One never taken is killed at exit,
        having made nothing (a command that stops at a config mistake). One that cannot be
        started now (no processes left) is started by the Writer, which says why it cannot."""
        if factory in _SPARES:
            return
        try:
            _SPARES[factory] = _spawn(factory)
        except OSError:
            return
        atexit.unregister(_kill_spares)  # once, however many spares
        atexit.register(_kill_spares)

    def send(self, method: str, *args: Any, reply: bool = False) -> int:
        """Queue ``method(*args)``; returns the call's number for ``result`` when ``reply``."""
        call = next(self._calls)
        try:
            _put(self._conn, (call, method, args, reply))
        except (OSError, ValueError) as error:  # ValueError: pickled beyond the pipe's limit
            raise WriterError(f"the tracking process is gone ({error})") from error
        return call

    def result(self, call: int) -> Any:
        """Wait for an answered call's value (or raise its error)."""
        while call not in self._replies:
            self._receive()
        ok, value = self._replies.pop(call)
        if not ok:
            raise WriterError(value)
        return value

    def answered(self, call: int) -> bool:
        """Whether an answered call's reply has come (``result`` then returns at once);
        never waits."""
        while call not in self._replies and self._conn.poll():
            self._receive()
        return call in self._replies

    def _receive(self) -> None:
        try:
            number, ok, value = _get(self._conn)
        except (EOFError, OSError) as error:
            raise WriterError("the tracking process died") from error
        self._replies[number] = (ok, value)

    def call(self, method: str, *args: Any) -> Any:
        return self.result(self.send(method, *args, reply=True))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Let the helper finish every queued call, then stop it."""
        if self._conn.closed:
            return
        with contextlib.suppress(WriterError):
            self.call("__close__")
        self._conn.close()
        self.process.wait(timeout=60)
        atexit.unregister(self.close)


# A helper computes nothing in parallel, and each numeric library's idle worker threads spin
# for a while when it loads (numpy's and scipy's OpenBLAS: 0.05 s of CPU each, measured).
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

# factory -> a helper started for it that waits for its arguments (``Writer.prestart``)
_SPARES: dict[Callable[..., Any], tuple[subprocess.Popen, Connection]] = {}


def _kill_spares() -> None:
    """At exit: helpers started early and never taken hold nothing, so they are killed."""
    while _SPARES:
        _discard(*_SPARES.popitem()[1])


def _discard(process: subprocess.Popen, conn: Connection) -> None:
    """Kill a helper that holds nothing (a spare), close its socket and reap it."""
    process.kill()
    conn.close()
    process.wait()


def _spawn(factory: Callable[..., Any]) -> tuple[subprocess.Popen, Connection]:
    """A helper for ``factory``, and the client's end of its socket."""
    ours, theirs = socket.socketpair()
    # A plain interpreter, not multiprocessing's spawn: that re-imports the caller's main
    # module, and fails in a joblib worker (its start method is "loky"). A session of its
    # own: Ctrl-C in the terminal reaches the job, which then records it through here.
    boot = f"import sys; sys.path[:0] = {sys.path!r}; from src.writer import _main; _main()"
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", boot],
            stdin=theirs.fileno(),
            start_new_session=True,
            env={**os.environ, **ONE_THREAD},
        )
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    conn = Connection(ours.detach())
    _put(conn, factory)
    return process, conn


def _put(conn: Connection, message: object) -> None:
    """Plain pickle, not Connection.send's: torch registers shared-memory reductions there,
    which only work between multiprocessing's own processes."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _get(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def _main() -> None:
    """The helper process: its standard input is the socket to the client.

    It ignores the signals meant for its job: SLURM sends SIGTERM (scancel, time limit) and
    submitit's early warning (SIGUSR2) to every process of a job at once, and the job needs
    its helper to record the stop. The helper ends when its client closes it or dies (then
    ``abandoned`` closes what was left open); every call it makes has a deadline, and SLURM's
    SIGKILL follows ``KillWait`` seconds after SIGTERM."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    from src import quick_exit

    conn = Connection(os.dup(0))
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    factory = _get(conn)
    with contextlib.suppress(Exception):  # a failed import fails again, and says so, below
        getattr(factory, "prepare", lambda: None)()
    try:
        args = _get(conn)
    except (EOFError, OSError):  # a spare never taken: its client is gone
        quick_exit.leave(0)
    _serve(conn, factory, args)
    quick_exit.leave(0)  # every call is done; skip MLflow's and torch's teardown (1.7 s)


def _serve(conn: Connection, factory: Callable[..., Any], args: tuple) -> None:
    """The helper's loop. Calls run in the order sent, except that an answered call the
    object lists in ``urgent`` goes first (a job waiting for its new runs' ids need not wait
    for the last job's model). A call's exception becomes its reply, or, unanswered, the
    object's ``failed(method, args, error)``; a call the object's ``refuse(method, args)`` gives a
    reason for fails with it, untried. While no call waits, the object's ``idle()``
    runs (one small step per call, False when there is nothing left to do). When the client
    is gone (killed), the object's ``abandoned()`` closes what it had open."""
    try:
        served = factory(*args)
    except Exception as error:
        served = _Broken(f"{type(error).__name__}: {error}")
    idle = getattr(served, "idle", lambda: False)
    urgent = getattr(served, "urgent", frozenset())
    refuse = getattr(served, "refuse", lambda method, args: None)
    queue: deque[tuple] = deque()
    seconds: dict[str, float] = {}
    connected = True
    while True:
        if connected:
            connected = _fill(conn, queue, idle)
        if not queue:
            getattr(served, "abandoned", lambda: None)()
            return
        first = next((m for m in queue if m[3] and m[1] in urgent), queue[0])
        queue.remove(first)
        call, method, call_args, reply = first
        if method == "__close__":
            _put(conn, (call, True, None))
            return
        if method == "__seconds__":  # time spent per method since the last ask (bench/)
            value, ok, seconds = seconds, True, {}
        elif reason := refuse(method, call_args):  # e.g. the store is gone: fail now, untried
            value, ok = reason, False
            if not reply:
                getattr(served, "failed", lambda *a: None)(method, call_args, value)
        else:
            started = time.perf_counter()
            try:
                value, ok = getattr(served, method)(*call_args), True
            except Exception as error:
                value, ok = f"{type(error).__name__}: {error}", False
                if not reply:
                    getattr(served, "failed", lambda *a: None)(method, call_args, value)
            seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - started
        if reply and connected:
            with contextlib.suppress(OSError):
                _put(conn, (call, ok, value))


def _fill(conn: Connection, queue: deque[tuple], idle: Callable[[], bool]) -> bool:
    """Take every call already sent; with none, do idle work until one comes. False once the
    client is gone."""
    try:
        while conn.poll():
            queue.append(_get(conn))
        while not queue:
            if not conn.poll() and idle():
                continue
            queue.append(_get(conn))
    except (EOFError, OSError):
        return False
    return True


class _Broken:
    """Stands in for an object that could not be built: every call fails with why. The
    loop's optional hooks are spelled out, or ``__getattr__`` would answer them too."""

    urgent = frozenset()

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def idle(self) -> bool:
        return False

    def failed(self, *args: Any) -> None:
        pass  # the reason is every answered call's reply

    def refuse(self, method: str, args: tuple) -> None:
        return None  # every call fails by itself, with the reason

    def abandoned(self) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def fail(*args: Any) -> Any:
            raise WriterError(self.reason)

        return fail
