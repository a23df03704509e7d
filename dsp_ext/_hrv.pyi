"""Type stub of the Cython RSA detrend / band-pass / epoch kernel (``_hrv.pyx``)."""

import numpy as np
import numpy.typing as npt

class RsaKernel:
    epoch_n: int
    ns: int
    has_grid: bool
    epoch: int
    def __init__(self, epoch_n: int, w: npt.NDArray[np.float64], sos: npt.NDArray[np.float64]) -> None: ...
    def reset(self) -> None: ...
    @property
    def state_nbytes(self) -> int: ...
    def push(
        self, grid_index: npt.NDArray[np.int64], values: npt.NDArray[np.float64]
    ) -> list[tuple[int, npt.NDArray[np.float64], npt.NDArray[np.float64]]]: ...
