import numpy as np
import pytest

from core.errors import DyadsyncError
from core.vocab import BlockFlags
from firmware_bridge.block import BlockError, SampleBlock


def test_block_normalises_and_freezes():
    b = SampleBlock("therapist/eda", 3, 10, 32, [1, 2, 3], BlockFlags.GAP_BEFORE | BlockFlags.SATURATED)
    assert b.values.dtype == np.float32 and not b.values.flags.writeable
    assert (b.role, b.signal, b.n, b.rate_hz) == ("therapist", "eda", 3, 32.0)
    assert b.times_ns()[2] == 10 + round(2e9 / 32)
    assert b.flags & BlockFlags.GAP_BEFORE


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stream": "eda"}, "role"),
        ({"stream": "nurse/eda"}, "role"),
        ({"stream": "client/EDA"}, "signal"),
        ({"seq": -1}, "uint32"),
        ({"seq": 2**32}, "uint32"),
        ({"rate_hz": 0}, "rate_hz"),
        ({"rate_hz": float("nan")}, "rate_hz"),
        ({"values": np.zeros((2, 2))}, "one-dimensional"),
        ({"flags": 2**33}, "32 bits"),
        ({"t0_ns": 1.5}, "t0_ns"),
    ],
)
def test_block_rejects_bad_fields(kwargs, message):
    args = {"stream": "client/eda", "seq": 0, "t0_ns": 0, "rate_hz": 4.0, "values": [0.0], "flags": 0} | kwargs
    with pytest.raises(BlockError, match=message) as info:
        SampleBlock(**args)
    assert isinstance(info.value, DyadsyncError) and isinstance(info.value, ValueError)
