"""The scoring kernels' warm-up: every kernel the worker calls is compiled (or loaded from
numba's cache) before the first batch, for the argument types the worker passes."""

import numpy as np
from numba.core.registry import CPUDispatcher

from stream.scoring import treekernels


def kernels():
    return {name: k for name, k in vars(treekernels).items() if isinstance(k, CPUDispatcher) and not name.startswith("_")}


def test_warm_loads_every_public_kernel_for_float64_batches():
    treekernels.warm()
    for name, kernel in kernels().items():
        assert kernel.signatures, f"{name} was not compiled by warm()"
    batch = np.zeros((3, 4))
    assert treekernels.raw_batch_plain_serial.typeof_pyval(batch) in {
        sig[0] for sig in treekernels.raw_batch_plain_serial.signatures}
    assert treekernels.raw_batch.typeof_pyval(batch) in {sig[0] for sig in treekernels.raw_batch.signatures}


PROBE = """
import sys
import numba, numpy as np
from stream.scoring import treekernels as tk
zero = np.zeros(1, np.int64)
plain = tk.layout(zero, zero, np.zeros(1), zero, zero, np.ones(1))
getattr(tk, sys.argv[1])(np.zeros((600, 1)), *plain)
try:
    numba.threading_layer()
    print("pool started")
except ValueError:  # no parallel region has run in this process
    print("no pool")
"""


def test_the_serial_kernel_never_starts_the_thread_pool_whatever_the_cache_holds(tmp_path):
    """numba caches compiled code per Python function, not per compile flags: were both
    kernels compiled from one function, the serial one would load the parallel code a
    process compiled and cached before it, and launch the pool on every small batch."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def run(kernel: str) -> str:
        done = subprocess.run([sys.executable, "-c", PROBE, kernel], env=env, capture_output=True, text=True,
                              timeout=300, check=True)
        return done.stdout.strip()

    assert run("raw_batch_plain") == "pool started"      # compiled and cached first
    assert run("raw_batch_plain_serial") == "no pool"    # loads or compiles its own code
