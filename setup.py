"""Builds the compiled backends of salt_kernels.

- salt_kernels._salt_cpu: csrc/cpu + python/bind_cpu.cpp, plain C++17 through pybind11. No torch
  headers or libraries are involved, so one build works with any installed torch.

Set SALT_SKIP_CPU_BUILD=1 to skip it (the package then falls back to the reference backend).
"""

import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = []
if os.environ.get("SALT_SKIP_CPU_BUILD") != "1":
    ext_modules.append(
        Pybind11Extension(
            "salt_kernels._salt_cpu",
            ["csrc/cpu/salt_cpu.cpp", "python/bind_cpu.cpp"],
            cxx_std=17,
            # No -ffast-math: the kernel relies on IEEE -inf and NaN. Per-ISA code paths are
            # selected at run time inside the library, so no -march flag is needed.
            extra_compile_args=["-O3", "-Wno-psabi"],
            extra_link_args=["-pthread"],
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
