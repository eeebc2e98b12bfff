"""Builds the compiled backends of salt_kernels.

- salt_kernels._salt_cpu: csrc/cpu + python/bind_cpu.cpp, plain C++17 through pybind11. No torch
  headers or libraries are involved, so one build works with any installed torch.

Set SALT_SKIP_CPU_BUILD=1 to skip it (the package then falls back to the reference backend).

- salt_kernels._salt_cuda: csrc/cuda (nvcc, sm_90 SASS + compute_90 PTX) + python/bind_cuda.cpp
  (host compiler, pybind11), linked with the static CUDA runtime, so it imports without a GPU and
  needs no CUDA-enabled torch. Built only where nvcc is found (CUDA_HOME/bin, CUDA_PATH/bin, PATH,
  /usr/local/cuda/bin); a missing nvcc or a failing CUDA build is reported in one line and the
  rest of the package still builds. Set SALT_SKIP_CUDA_BUILD=1 to skip it.

Compilation goes through ninja where it is found (pyproject.toml lists it among the build
requirements; PATH or the `ninja` Python package): setup.py writes a build.ninja per extension
under build/ninja.<platform>-<python>/, holding the nvcc objects and the C++ objects with the
compiler's own dependency files, so rebuilds compile only what changed (headers included) and
compile in parallel (MAX_JOBS caps the jobs); the link stays setuptools' own. Without ninja (or
with SALT_USE_NINJA=0) every object is compiled on each build, as setuptools does, and the build
says so in one line. setup.py imports no torch.
"""

import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.errors import CompileError

ROOT = os.path.dirname(os.path.abspath(__file__))

ext_modules = []
if os.environ.get("SALT_SKIP_CPU_BUILD") != "1":
    ext_modules.append(
        Pybind11Extension(
            "salt_kernels._salt_cpu",
            ["csrc/cpu/salt_cpu.cpp", "python/bind_cpu.cpp"],
            depends=["csrc/cpu/salt_cpu.h", "csrc/cpu/rows_impl.inc", "csrc/cpu/topk_impl.inc", "csrc/salt_math.h",
                     "python/bind_args.h"],
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
    "csrc/cuda/salt_cuda_topk.cu",
]
CUDA_DEPENDS = CUDA_SOURCES + ["csrc/cuda/rows_kernel.cuh", "csrc/cuda/topk_kernel.cuh", "csrc/cuda/salt_cuda.h",
                               "csrc/salt_math.h", "python/bind_args.h"]
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


# ---- ninja: incremental, parallel compilation ------------------------------------------------------
# The model is torch.utils.cpp_extension's BuildExtension (_write_ninja_file_and_compile_objects):
# the compiler's compile() is replaced, for one extension, by one that writes the commands
# setuptools would run into a build.ninja (plus the nvcc commands of the CUDA extension) and runs
# ninja on it. The objects live in a fixed directory under build/, because `pip install -e .`
# gives setuptools a fresh temporary build_temp on every build.


def _find_ninja():
    if os.environ.get("SALT_USE_NINJA", "1") == "0":
        return None
    found = shutil.which("ninja")
    if found:
        return found
    try:  # the PyPI package, when its script is not on PATH
        import ninja

        path = os.path.join(ninja.BIN_DIR, "ninja")
        return path if os.path.isfile(path) else None
    except (ImportError, AttributeError):
        return None


def _ninja_path(path):
    """A path in a build statement: $, space and colon escaped."""
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _ninja_command(args):
    """Arguments as one shell command line inside a ninja variable."""
    return " ".join(shlex.quote(str(a)) for a in args).replace("$", "$$")


def _write_ninja_file(path, cxx_jobs, nvcc_jobs):
    """cxx_jobs: (command before the source, source, object, arguments after it) as setuptools
    would run them; nvcc_jobs: (nvcc command, source, object). Writes the file only when its text
    changes, so an unchanged build stays a no-op."""
    lines = [
        "ninja_required_version = 1.3",
        "",
        "rule cxx",
        "  command = $pre -MMD -MF $out.d $in -o $out $post",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = C++ $out",
        "",
        "rule nvcc",
        "  command = $pre --generate-dependencies-with-compile --dependency-output $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = NVCC $out",
        "",
    ]
    for pre, src, obj, post in cxx_jobs:
        lines += [f"build {_ninja_path(obj)}: cxx {_ninja_path(src)}", f"  pre = {_ninja_command(pre)}",
                  f"  post = {_ninja_command(post)}"]
    for pre, src, obj in nvcc_jobs:
        lines += [f"build {_ninja_path(obj)}: nvcc {_ninja_path(src)}", f"  pre = {_ninja_command(pre)}"]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


def _run_ninja(ninja, build_dir):
    cmd = [ninja, "-C", build_dir]
    if os.environ.get("MAX_JOBS"):
        cmd += ["-j", os.environ["MAX_JOBS"]]
    print(f"salt_kernels: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        raise CompileError(f"ninja failed in {build_dir}:\n{proc.stdout}")


class BuildExt(build_ext):
    def build_extensions(self):
        self._ninja = _find_ninja()
        why = None
        if os.environ.get("SALT_USE_NINJA") == "0":
            why = "SALT_USE_NINJA=0"
        elif self._ninja is None:
            why = "ninja not found (PATH, the ninja package)"
        elif self.compiler.compiler_type != "unix":
            why = f"ninja builds support the unix compiler only, not {self.compiler.compiler_type}"
            self._ninja = None
        if why:
            print(f"salt_kernels: {why}: compiling without ninja (every object, on every build)", flush=True)
        super().build_extensions()

    def _ninja_dir(self, ext):
        tag = f"{self.plat_name}-{sys.implementation.cache_tag}"
        return os.path.join(ROOT, "build", f"ninja.{tag}", ext.name)

    def _build_with_ninja(self, ext):
        """super().build_extension with compile() running ninja (C++ sources, and the nvcc objects
        of the CUDA extension) and the up-to-date checks left to ninja and to the link."""
        build_dir = self._ninja_dir(ext)
        nvcc_jobs = []
        if ext.name == CUDA_EXT:
            for src in CUDA_SOURCES:
                obj = os.path.join(build_dir, "cuda", os.path.basename(src) + ".o")
                nvcc_jobs.append(([ext.nvcc, *NVCC_FLAGS], os.path.join(ROOT, src), obj))
            ext.extra_objects = [obj for _, _, obj in nvcc_jobs]
        compiler = self.compiler

        def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                    extra_postargs=None, depends=None):
            # Sources relative to the project, so that objects land at build_dir/<source path>.o
            sources = [os.path.relpath(os.path.join(ROOT, src), ROOT) for src in sources]
            macros, objects, extra_postargs, pp_opts, _ = compiler._setup_compile(
                build_dir, macros, include_dirs, sources, depends, extra_postargs
            )
            cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
            cxx = getattr(compiler, "compiler_so_cxx", None) or compiler.compiler_so
            jobs = [([*cxx, *cc_args], os.path.join(ROOT, src), obj, extra_postargs) for src, obj in zip(sources, objects)]
            _write_ninja_file(os.path.join(build_dir, "build.ninja"), jobs, nvcc_jobs)
            _run_ninja(self._ninja, build_dir)
            return objects

        force = self.force
        compiler.compile = compile  # an instance attribute: this extension only
        self.force = True  # ninja decides what to compile; the link checks its objects' times
        try:
            super().build_extension(ext)
        finally:
            self.force = force
            del compiler.compile

    def build_extension(self, ext):
        if ext.name != CUDA_EXT:
            if self._ninja:
                return self._build_with_ninja(ext)
            return super().build_extension(ext)
        try:
            if self._ninja:
                self._build_with_ninja(ext)
            else:
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
