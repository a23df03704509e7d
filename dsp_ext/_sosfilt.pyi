"""Type stub of the Cython SOS filter kernel (``_sosfilt.pyx``)."""

import numpy as np
import numpy.typing as npt

def sosfilt_hold(
    sos: npt.NDArray[np.float64],
    zi: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
    hold: npt.NDArray[np.float64],
) -> None: ...
def eda_front(
    x: npt.NDArray[np.float64],
    contact: npt.NDArray[np.uint8],
    out: npt.NDArray[np.float64],
    sos: npt.NDArray[np.float64],
    zi: npt.NDArray[np.float64],
    zi_unit: npt.NDArray[np.float64],
    st: npt.NDArray[np.float64],
    min_us: float,
    max_us: float,
    max_slope_us_s: float,
    rate_hz: float,
    guard_n: int,
) -> int: ...
