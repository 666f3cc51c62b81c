"""losslab's benchmarks: ``python -m bench.run`` (``make bench``), ``bench.tables`` and the
plain-PyTorch baseline ``bench.baseline``.

Ctrl-C ends a bench command in one line with exit 130, wherever it lands: while it loads
(torch takes seconds) and while it measures (``command``). This is src/quick_exit.py's
handling, kept here because the bench must not import losslab's package to get it: ``src``
sets up its process (OpenBLAS threads), and the baseline's process must stay plain.
"""

import os
import signal
import sys
from collections.abc import Callable


def _interrupted_while_loading(signum: int, frame: object) -> None:
    print("bench: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def command(main: Callable[[], object]) -> None:
    """``main()`` with Ctrl-C as KeyboardInterrupt again (losslab's jobs the bench runs in its
    own process stop on it, marking their runs KILLED), then one line and exit 130."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)


if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_loading)  # `python -m bench.<x>` starts
