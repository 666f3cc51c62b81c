"""losslab: a config-driven experiment framework for comparing loss functions."""

import os
import sys

# numpy's and scipy's OpenBLAS each start a worker thread per extra core when they load, and
# those spin for a while (0.05 s of CPU each in a study run on 2 cores, measured). Every
# command loads them with one; a job then sets its own count (trainer.threads, in
# experiment.run) before it computes anything. A value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if sys.argv[:1] == ["-m"]:  # `python -m src.<command>` is starting (runpy names the file later)
    from src import quick_exit

    quick_exit.quiet_while_loading()
