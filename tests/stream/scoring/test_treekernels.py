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
