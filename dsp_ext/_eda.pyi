"""Type stub of the Cython EDA grid-stage kernel (``_eda.pyx``)."""

import numpy as np
import numpy.typing as npt

TONIC_SETTLE: int

class EdaGridKernel:
    off: float
    step: float
    first_index: int
    ns: int
    def __init__(
        self,
        off: float,
        step: float,
        first_index: int,
        sos: npt.NDArray[np.float64],
        zi_unit: npt.NDArray[np.float64],
        onset_step: float,
        min_amp: float,
        max_rise: int,
    ) -> None: ...
    def reset(self) -> None: ...
    @property
    def state_nbytes(self) -> int: ...
    @property
    def n_in_samples(self) -> int: ...
    def push(
        self, y: npt.NDArray[np.float64]
    ) -> tuple[
        npt.NDArray[np.int64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.bool_],
        list[tuple[int, int, float]],
    ]: ...
