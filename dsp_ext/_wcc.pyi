"""Type stub of the Cython windowed cross-correlation kernel (``_wcc.pyx``)."""

import numpy as np
import numpy.typing as npt

class WccEngine:
    win: int
    inc: int
    lag: int
    half: int
    nl: int
    n_slots: int
    rate_hz: float
    peak_min_r: float
    leader_min_r: float
    def __init__(
        self,
        win: int,
        inc: int,
        lag: int,
        half: int,
        rate_hz: float,
        peak_min_r: float = 0.0,
        leader_min_r: float = 0.0,
    ) -> None: ...
    def reset(self) -> None: ...
    @property
    def n_samples(self) -> tuple[int, int]: ...
    @property
    def state_nbytes(self) -> int: ...
    def push(
        self, t: npt.NDArray[np.float64], c: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...

def wcc_batch(
    t: npt.NDArray[np.float64],
    c: npt.NDArray[np.float64],
    win: int,
    inc: int,
    lag: int,
    half: int,
    rate_hz: float,
    peak_min_r: float = 0.0,
    leader_min_r: float = 0.0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def circular_null(
    t: npt.NDArray[np.float64],
    c: npt.NDArray[np.float64],
    shifts: npt.NDArray[np.int64],
    win: int,
    inc: int,
    lag: int,
    half: int,
    rate_hz: float,
    columns: npt.NDArray[np.int64],
    fisher: npt.NDArray[np.uint8],
    peak_min_r: float = 0.0,
    leader_min_r: float = 0.0,
) -> npt.NDArray[np.float64]: ...
def rotation_null(
    t: npt.NDArray[np.float64],
    tq: npt.NDArray[np.float64],
    ringx: npt.NDArray[np.float64],
    ringz: npt.NDArray[np.float64],
    nr: int,
    offsets: npt.NDArray[np.int64],
    win: int,
    inc: int,
    lag: int,
    half: int,
    rate_hz: float,
    columns: npt.NDArray[np.int64],
    fisher: npt.NDArray[np.uint8],
    peak_min_r: float,
    leader_min_r: float,
    mt: npt.NDArray[np.float64],
    lt: npt.NDArray[np.intp],
    pt: npt.NDArray[np.intp],
    lc: npt.NDArray[np.intp],
    pc: npt.NDArray[np.intp],
    tile_span: int = 0,
    tile_max: int = 32,
) -> tuple[npt.NDArray[np.float64], int]: ...
