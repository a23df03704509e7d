"""GSR (electrodermal) front-end: ADC volts -> skin conductance in microsiemens.

The front-end is the common constant-voltage divider used by the Grove GSR sensor, whose documentation
gives the skin resistance from a 10-bit reading ``x`` and the reading with open electrodes (the
*calibration* value ``x_cal``) as ``R = (1024 + 2 x) * 10 kOhm / (x_cal - x)``. Hence the conductance
``G = (x_cal - x) / ((1024 + 2 x) * 10 kOhm)``, expressed here in volts (``x = 1024 * v / supply_v``).
A reading at or past the calibration point (``x >= x_cal``) would be zero or negative conductance: it is
invalid (NaN, flagged), never a negative value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError


@dataclass(frozen=True)
class GsrFrontEnd:
    """calibration_v: ADC volts with the electrodes open (no skin). supply_v: front-end supply.
    r_ref_ohm: the divider's reference resistance (10 kOhm on the Grove board)."""

    calibration_v: float
    supply_v: float = 3.3
    r_ref_ohm: float = 10_000.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.supply_v) and self.supply_v > 0):
            raise ConfigError(f"supply_v must be > 0, got {self.supply_v!r}")
        if not (math.isfinite(self.calibration_v) and 0 < self.calibration_v <= self.supply_v):
            raise ConfigError(
                f"calibration_v must be within (0, supply_v={self.supply_v}] V, got {self.calibration_v!r}"
            )
        if not (math.isfinite(self.r_ref_ohm) and self.r_ref_ohm > 0):
            raise ConfigError(f"r_ref_ohm must be > 0, got {self.r_ref_ohm!r}")

    def to_microsiemens(self, volts) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(eda_us, invalid)``: conductance in µS (NaN where invalid) and the invalid mask.

        Invalid: NaN/inf input, negative volts, or a reading at or past the calibration point."""
        v = np.atleast_1d(np.asarray(volts, dtype=np.float64))
        x = v * (1024.0 / self.supply_v)
        x_cal = self.calibration_v * (1024.0 / self.supply_v)
        invalid = ~np.isfinite(v) | (v < 0) | (x >= x_cal)
        with np.errstate(invalid="ignore", divide="ignore"):
            g_us = 1e6 * (x_cal - x) / ((1024.0 + 2.0 * x) * self.r_ref_ohm)
        g_us = np.where(invalid, np.nan, g_us)
        return g_us, invalid

    def microsiemens_of(self, volts: float) -> float:
        """:meth:`to_microsiemens` of one reading in plain float arithmetic (the same operations, so the same
        number; NaN where invalid), for the few samples of a block read one by one."""
        k = 1024.0 / self.supply_v
        x = volts * k
        x_cal = self.calibration_v * k
        if not (math.isfinite(volts) and volts >= 0 and x < x_cal):
            return math.nan
        return 1e6 * (x_cal - x) / ((1024.0 + 2.0 * x) * self.r_ref_ohm)

    def volts_for(self, eda_us: float) -> float:
        """Inverse: the ADC volts a conductance of ``eda_us`` (> 0) produces (for emulators and tests)."""
        if not eda_us > 0:
            raise ValueError(f"eda_us must be > 0, got {eda_us!r}")
        x_cal = self.calibration_v * (1024.0 / self.supply_v)
        g = eda_us * 1e-6 * self.r_ref_ohm
        x = (x_cal - 1024.0 * g) / (1.0 + 2.0 * g)
        return x * self.supply_v / 1024.0
