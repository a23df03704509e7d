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
