"""losslab: a config-driven experiment framework for comparing loss functions."""

import _signal  # signal's own core, loaded with Python: `import signal` takes 2 ms
import os
import sys

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C


def interrupted_while_loading(signum: int, frame: object) -> None:
    """Ctrl-C while a command still loads its modules (torch alone takes seconds): one line
    and exit 130, not the traceback of whichever import it hit; nothing exists yet.
    ``quick_exit.run`` hands Ctrl-C back to the command once it starts its work."""
    os.write(2, b"losslab: interrupted\n")
    os._exit(INTERRUPTED)


# First, before any import of ours: seen in CI, a Ctrl-C landed in quick_exit's own imports
# (typing, logging), 30-40 ms of a loaded machine's start, while the handler waited on them.
# A command started with Ctrl-C ignored (`nohup`, a script's `&`) keeps ignoring it.
if sys.argv[:1] == ["-m"] and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, interrupted_while_loading)  # `python -m src.<command>` starts

# numpy's and scipy's OpenBLAS each start a worker thread per extra core when they load, and
# those spin for a while (0.05 s of CPU each in a study run on 2 cores, measured). Every
# command loads them with one; a job then sets its own count (trainer.threads, in
# experiment.run) before it computes anything. A value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
