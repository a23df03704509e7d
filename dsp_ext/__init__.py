"""Synchrony and physiology DSP: Cython kernels, their numpy reference twins, and the Python API."""
