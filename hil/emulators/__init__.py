"""Register-level I2C device emulators and a firmware emulator on a pty (ARCHITECTURE §2).

Written from datasheet facts, not from the drivers in ``firmware_bridge``; every emulator records what
the driver did (``log``) and takes fault knobs.
"""
