"""Hardware side of a dyadsync unit: serial firmware protocol, I2C sensor drivers, clock mapping.

Import the modules themselves (``firmware_bridge.block``, ``firmware_bridge.link``, ...): this package
file imports nothing, so taking ``SampleBlock`` does not pull in pyserial or smbus2.
"""
