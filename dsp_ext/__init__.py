"""Synchrony and physiology DSP: Cython kernels, their numpy reference twins, and the Python API.

Modules: :mod:`dsp_ext.synchrony` (windowed cross-correlation, batch and streaming), :mod:`dsp_ext.stats`
(session statistics, surrogates, regulation), :mod:`dsp_ext.filters`, :mod:`dsp_ext.grid`,
:mod:`dsp_ext.eda`, :mod:`dsp_ext.ppg`, :mod:`dsp_ext.hrv`, :mod:`dsp_ext.reference` (numpy twins).
See docs/dsp.md.
"""
