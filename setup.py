"""Build the Cython kernels of dsp_ext: every ``dsp_ext/*.pyx`` becomes an extension module.

Metadata lives in pyproject.toml; this file only declares the compiled extensions, which setuptools
cannot yet take from pyproject.toml alone. No generated ``.c`` file is committed.
"""

from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
extensions = [
    Extension(
        f"dsp_ext.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # -ffp-contract=off: no fused multiply-add contraction, so a kernel gives the same bits on
        # aarch64 (where GCC fuses a*b+c by default) as on x86-64: a unit's live numbers equal the lab's.
        # -g0: no debug information in the installed modules (half their size; Python's own CFLAGS add -g).
        extra_compile_args=["-O3", "-ffp-contract=off", "-g0"],
    )
    for pyx in sorted((HERE / "dsp_ext").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
