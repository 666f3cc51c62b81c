"""Heavy imports without Python's garbage collector, their objects frozen after.

Importing torch, Lightning and scikit-learn creates about 800,000 objects that live as long
as the process. While they are created, the collector walks all of them again every few
thousand allocations: ``import src.experiment`` took 3.9-4.0 s with it and 3.0-3.4 s without
(measured 2026-12-03, this machine). Afterwards ``gc.freeze`` moves them out of the
collector's sight, so each later full collection walks only what was made since: in a
50-run sweep those had taken 1.0 s of the job process and 2.0 s of its tracking process.
The price is the imports' own cyclic garbage, kept for the life of the process (8 MB).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_imports() -> Iterator[None]:
    """Run the block with the collector off, then freeze every object so far and turn it
    back on; inside another such block (or with the collector off), only run the block."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
