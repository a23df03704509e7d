"""Type stub of the Cython IBI correction kernel (``_ibi.pyx``)."""

import numpy as np
import numpy.typing as npt

class IbiKernel:
    keep: int
    n_corrected: int
    def __init__(self, keep: int = 99) -> None: ...
    def reset(self) -> None: ...
    @property
    def n_kept(self) -> int: ...
    @property
    def state_nbytes(self) -> int: ...
    def push(
        self, beats_s: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]: ...
