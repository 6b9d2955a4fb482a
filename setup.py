"""Builds the C kernel (``src/probe_dask/kernels/ckernel/*.c``) when the package is installed.

Everything else about the package is declared in ``pyproject.toml``; this file only lists
the compiled parts, which ``pyproject.toml`` cannot express. Two variants of one shared
library are built, both plain C (no Python headers) and loaded with ``ctypes``:

- ``_fused_generic``: the architecture's baseline (SSE2 on x86-64), runs on any CPU;
- ``_fused_avx2`` (x86-64 only): the AVX2/FMA paths of ``fused.c``, loaded only where the
  CPU reports both features (:mod:`probe_dask.kernels.ckernel` reads them at import).

Neither is built with ``-march=native``: a wheel or a shared install runs on nodes other
than the one that built it. Neither uses ``-ffast-math`` (see ``fused.c``).
"""

import platform

from setuptools import Extension, setup

SOURCES = ["src/probe_dask/kernels/ckernel/fused.c", "src/probe_dask/kernels/ckernel/step.c"]
BASE_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
VARIANTS = {"generic": []}
if platform.machine().lower() in ("x86_64", "amd64"):
    VARIANTS["avx2"] = ["-mavx2", "-mfma"]


def _extension(name, flags):
    compile_flags = BASE_FLAGS + flags
    return Extension(
        f"probe_dask.kernels.ckernel._fused_{name}",
        sources=SOURCES,
        extra_compile_args=compile_flags,
        libraries=["m"],
        # The library reports what it is (ckernel.library_variant / library_flags); a
        # single argv element each, so the quotes reach the C preprocessor as written.
        define_macros=[("PD_VARIANT", f'"{name}"'), ("PD_FLAGS", '"' + " ".join(compile_flags) + '"')],
    )


setup(ext_modules=[_extension(name, flags) for name, flags in VARIANTS.items()])
