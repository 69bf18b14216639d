"""Build of the ``portrait_engine._C`` extension.

The CPU kernels are always built. The CUDA kernels are built too when torch itself has CUDA
support and ``nvcc`` is found (``CUDA_HOME``); never decided from ``torch.cuda.is_available()``,
since a build host need not have a GPU. ``PORTRAIT_ENGINE_CUDA=0|1`` forces the choice and
``PORTRAIT_ENGINE_NO_EXTENSION=1`` skips the extension (the package then runs on its ``torch``
and ``triton`` backends only). ``TORCH_CUDA_ARCH_LIST`` defaults to ``8.0;9.0``.

Build time: the CPU kernels' AVX2 and AVX-512 clones (``PE_ISA_CLONES`` in ``csrc/cpu_math.h``)
are most of it (``render_cpu.cpp``: 166 s with them, 18 s without, one core of the 2-core
development machine). ``PORTRAIT_ENGINE_ISA_CLONES=0`` leaves them out, for builds whose CPU
kernels are not timed (a GPU machine's short lease); the extension's ``BUILD_INFO`` says
``isa_clones=0`` then. Debug info is off (``-g0``: 20 % of the compile time and 85 % of the
object size); ``PORTRAIT_ENGINE_DEBUG=1`` keeps Python's ``-g``.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ["portrait_engine", "portrait_engine.kernels"] + [
    "portrait_engine."
    + os.path.relpath(d, os.path.join(ROOT, "portrait_engine")).replace(os.sep, ".")
    for d in sorted(glob.glob(os.path.join(ROOT, "portrait_engine", "**", ""), recursive=True))
    if os.path.exists(os.path.join(d, "__init__.py"))
    and os.path.abspath(d) != os.path.join(ROOT, "portrait_engine")
]
PACKAGE_DIR = {"portrait_engine": "portrait_engine", "portrait_engine.kernels": "kernels"}


def _want_cuda() -> bool:
    forced = os.environ.get("PORTRAIT_ENGINE_CUDA")
    if forced is not None:
        return forced == "1"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def _warn_on_compiler_mismatch() -> None:
    """Warn when ``CXX`` is not the major gcc version torch was built with: an extension built
    by another libstdc++ can crash at import (seen on a GPU machine whose image set
    ``CXX=/opt/gcc/bin/g++``; the system gcc of torch's version worked)."""
    import re
    import subprocess

    import torch

    cxx = os.environ.get("CXX")
    built = re.search(r"GCC (\d+)", torch.__config__.show())
    if not cxx or built is None:
        return
    try:
        version = subprocess.run(
            [cxx, "-dumpversion"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return
    if version.split(".")[0] != built.group(1):
        print(
            f"warning: CXX={cxx} is gcc {version}, torch was built with gcc {built.group(1)}; "
            "if the extension crashes at import, build with that compiler (e.g. CXX=/usr/bin/g++)"
        )


def _extensions():
    if os.environ.get("PORTRAIT_ENGINE_NO_EXTENSION") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    _warn_on_compiler_mismatch()

    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*/*.cu"))
    import torch

    # The C++ string ABI of torch itself, said explicitly: torch's build helper no longer passes
    # it, and a compiler whose default differs (a devtoolset-style gcc) builds an extension that
    # crashes where a std::string crosses into libtorch.
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    cxx = ["-O3", "-std=c++20", "-fopenmp", abi]
    if os.environ.get("PORTRAIT_ENGINE_DEBUG") != "1":
        cxx.append("-g0")  # after Python's own -g, so it wins
    if os.environ.get("PORTRAIT_ENGINE_ISA_CLONES") == "0":
        cxx.append("-DPE_NO_ISA_CLONES")
    include = [os.path.join(ROOT, "csrc")]
    if _want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = CUDAExtension(
            "portrait_engine._C",
            cpu_sources + cuda_sources,
            include_dirs=include,
            define_macros=[("PORTRAIT_ENGINE_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx,
                "nvcc": ["-O3", "-std=c++20", "-lineinfo", "-Xptxas=-v", abi],
            },
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "portrait_engine._C",
            cpu_sources,
            include_dirs=include,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
