"""Type stub of the Cython Elgendi beat detector (``_ppg.pyx``)."""

import numpy as np
import numpy.typing as npt

class ElgendiDetector:
    h1: int
    h2: int
    ring: int
    max_block: int
    min_delay: int
    beta: float
    def __init__(
        self,
        rate_hz: float,
        w1_s: float = 0.111,
        w2_s: float = 0.667,
        beta: float = 0.02,
        block_s: float = 1.0,
        n_blocks: int = 10,
        min_delay_s: float = 0.3,
        max_block_s: float = 1.5,
    ) -> None: ...
    def reset(self) -> None: ...
    @property
    def state_nbytes(self) -> int: ...
    @property
    def latency_samples(self) -> int: ...
    def push(self, y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
    def push_decided(
        self, y: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]: ...

class LiveHrKernel:
    rate_hz: float
    offset_s: float
    first_index: int
    k_next: int
    def __init__(
        self,
        rate_hz: float,
        offset_s: float,
        first_index: int,
        delay_s: float,
        hold_s: float,
        history: int,
        min_history: int,
        max_rel_dev: float,
        max_rejects: int,
        ibi_min_ms: float,
        ibi_max_ms: float,
    ) -> None: ...
    @property
    def state_nbytes(self) -> int: ...
    def push(
        self,
        beats: npt.NDArray[np.float64],
        decided: npt.NDArray[np.int64],
        n_done: int,
        ok: npt.NDArray[np.uint8],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
