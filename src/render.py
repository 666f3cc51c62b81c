"""Figures saved by a forked copy of this process while it goes on with other work.

Drawing a figure into a PNG (matplotlib's Agg, 0.05-0.15 s) is CPU work whose only result is
the file. The tracking process draws a job's learning curves and then saves the job's models,
and a sweep's report draws two figures: with a core to spare, a child process saves each
figure (a copy of this process, so the figure as it is at that moment) while this one goes
on, and the file is logged once the child is done. Without ``os.fork`` the figure is saved
at once, as before.
"""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path
from typing import Any

MAX_CHILDREN = 2  # figures drawn at once: one per core of a small machine, not one per figure
_running: list[Saving] = []


class Saving:
    """``figure`` being saved to ``path`` (savefig's ``options``); ``wait`` for the file."""

    def __init__(self, figure: Any, path: Path, **options: Any) -> None:
        self.path = path
        self.error: str | None = None
        self._pid: int | None = None
        self._errors = -1  # the child's error pipe, read when it has ended
        if not hasattr(os, "fork"):
            self._save(figure, options)
            return
        while len(_running) >= MAX_CHILDREN:
            _running[0]._reap()
        read, write = os.pipe()
        with warnings.catch_warnings():  # Python >= 3.12 warns of fork with threads: the
            warnings.simplefilter("ignore", DeprecationWarning)  # child only draws and exits
            pid = os.fork()
        if pid == 0:  # the child: save, say why not, and leave without any exit handler
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: it just stops
            status = 1  # unless it got to its end: the parent then says its process ended
            try:  # never back into the parent's code, whatever happens here
                os.close(read)
                self._save(figure, options)
                if self.error:
                    os.write(write, self.error.encode()[:4000])
                else:
                    status = 0
            finally:
                os._exit(status)
        os.close(write)
        self._pid, self._errors = pid, read
        _running.append(self)

    def _save(self, figure: Any, options: dict[str, Any]) -> None:
        try:
            figure.savefig(self.path, **options)
        except Exception as error:
            self.error = f"could not draw {self.path.name}: {type(error).__name__}: {error}"

    def _reap(self) -> None:
        _, status = os.waitpid(self._pid, 0)
        with os.fdopen(self._errors, "rb") as errors:
            told = errors.read().decode(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0:
            self.error = told or f"could not draw {self.path.name}: its process ended ({status})"
        self._pid = None
        _running.remove(self)

    def wait(self) -> Path:
        """The saved file, once it is written; raises if it could not be."""
        if self._pid is not None:
            self._reap()
        if self.error:
            raise RuntimeError(self.error)
        return self.path
