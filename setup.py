"""Builds the compiled backends of salt_kernels.

- salt_kernels._salt_cpu: csrc/cpu + python/bind_cpu.cpp, plain C++17 through pybind11. No torch
  headers or libraries are involved, so one build works with any installed torch.

Set SALT_SKIP_CPU_BUILD=1 to skip it (the package then falls back to the reference backend).

- salt_kernels._salt_cuda: csrc/cuda (nvcc, sm_90 SASS + compute_90 PTX) + python/bind_cuda.cpp
  (host compiler, pybind11), linked with the static CUDA runtime, so it imports without a GPU and
  needs no CUDA-enabled torch. Built only where nvcc is found (CUDA_HOME/bin, CUDA_PATH/bin, PATH,
  /usr/local/cuda/bin); a missing nvcc or a failing CUDA build is reported in one line and the
  rest of the package still builds. Set SALT_SKIP_CUDA_BUILD=1 to skip it.
"""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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

# ---- CUDA backend: salt_kernels._salt_cuda ----------------------------------------------------
# nvcc compiles csrc/cuda/*.cu to objects (in parallel, one per student dtype); the host compiler
# builds the pybind11 binding and links it with those objects and libcudart_static. Nothing here
# may break the CPU build: every failure is reported and the extension is left out.
CUDA_EXT = "salt_kernels._salt_cuda"
CUDA_SOURCES = [
    "csrc/cuda/salt_cuda.cu",
    "csrc/cuda/salt_cuda_f32.cu",
    "csrc/cuda/salt_cuda_bf16.cu",
    "csrc/cuda/salt_cuda_f16.cu",
]
CUDA_DEPENDS = CUDA_SOURCES + ["csrc/cuda/rows_kernel.cuh", "csrc/cuda/salt_cuda.h", "csrc/salt_math.h"]
NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-gencode", "arch=compute_90,code=sm_90",      # Hopper SASS
    "-gencode", "arch=compute_90,code=compute_90",  # PTX, JIT-compiled on newer GPUs
    "-Xcompiler", "-fPIC",
    "-Xcompiler", "-fvisibility=hidden",
]


def _cuda_say(message):
    print(f"salt_kernels: {message}", flush=True)


def _find_nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    fallback = "/usr/local/cuda/bin/nvcc"
    return fallback if os.path.isfile(fallback) else None


def _cuda_lib_dir(nvcc):
    """Directory holding libcudart_static.a, asking nvcc where its toolkit is (nvcc may be a
    wrapper script outside the toolkit)."""
    roots = []
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith("#$ TOP="):
                roots.append(os.path.normpath(line.split("=", 1)[1].strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in roots:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            if os.path.isfile(os.path.join(root, sub, "libcudart_static.a")):
                return os.path.join(root, sub)
    return None


def _cuda_extension():
    if os.environ.get("SALT_SKIP_CUDA_BUILD") == "1":
        _cuda_say("SALT_SKIP_CUDA_BUILD=1: the cuda backend is not built")
        return None
    nvcc = _find_nvcc()
    if nvcc is None:
        _cuda_say("nvcc not found (CUDA_HOME, CUDA_PATH, PATH): the cuda backend is skipped")
        return None
    lib_dir = _cuda_lib_dir(nvcc)
    if lib_dir is None:
        _cuda_say(f"libcudart_static.a not found next to {nvcc}: the cuda backend is skipped")
        return None
    ext = Pybind11Extension(
        CUDA_EXT,
        ["python/bind_cuda.cpp"],
        cxx_std=17,
        extra_compile_args=["-O2"],
        library_dirs=[lib_dir],
        libraries=["cudart_static", "dl", "rt", "pthread"],
        # Keep the static runtime's symbols private, so that a CUDA runtime torch loaded globally
        # can never interpose on (or be interposed by) this module's copy.
        extra_link_args=["-Wl,--exclude-libs,ALL", "-Wl,-Bsymbolic"],
        depends=CUDA_DEPENDS,
        optional=True,  # a failed build leaves it out instead of failing the install
    )
    ext.nvcc = nvcc
    return ext


def _nvcc_objects(ext, build_temp):
    """Compiles CUDA_SOURCES with nvcc into build_temp (skipping up-to-date objects); returns the
    object paths. Raises RuntimeError with nvcc's output on failure."""
    out_dir = os.path.join(build_temp, "salt_cuda_objects")
    os.makedirs(out_dir, exist_ok=True)
    newest_dep = max(os.path.getmtime(p) for p in CUDA_DEPENDS)
    jobs = []
    for src in CUDA_SOURCES:
        obj = os.path.join(out_dir, os.path.basename(src) + ".o")
        if not (os.path.exists(obj) and os.path.getmtime(obj) >= newest_dep):
            jobs.append((src, obj))

    def compile_one(job):
        src, obj = job
        cmd = [ext.nvcc, *NVCC_FLAGS, "-c", src, "-o", obj]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            if os.path.exists(obj):
                os.remove(obj)
            raise RuntimeError(f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")

    if jobs:
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        _cuda_say(f"compiling {len(jobs)} CUDA source(s) with {ext.nvcc} ({workers} in parallel)")
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(compile_one, jobs))
    return [os.path.join(out_dir, os.path.basename(src) + ".o") for src in CUDA_SOURCES]


class BuildExt(build_ext):
    def build_extension(self, ext):
        if ext.name != CUDA_EXT:
            return super().build_extension(ext)
        try:
            ext.extra_objects = _nvcc_objects(ext, self.build_temp)
            super().build_extension(ext)
        except Exception as exc:  # the CPU extension and the package must still install
            detail = str(exc).strip().splitlines()
            errors = [line.strip() for line in detail if "error" in line.lower()]
            _cuda_say(
                "the cuda backend failed to build and is skipped: "
                + (errors[0] if errors else detail[-1] if detail else type(exc).__name__)
            )
            if len(detail) > 1:
                print("\n".join(detail[-40:]), file=sys.stderr, flush=True)


_cuda_ext = _cuda_extension()
if _cuda_ext is not None:
    ext_modules.append(_cuda_ext)
# ---- end of the CUDA backend section --------------------------------------------------------------

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
