#!/usr/bin/env python
"""Compile every CUDA source of the extension with nvcc, without a GPU and without linking.

Runs ``nvcc -c -o /dev/null`` on each ``csrc/**/*.cu`` for sm_80 and sm_90 with the flags the
real build uses (torch's include paths and defines, ``-DPORTRAIT_ENGINE_WITH_CUDA``), prints
ptxas' register / spill report of every kernel, and exits non-zero on any compile error.
Exits 0 with a "skipped" message when nvcc cannot be found. Works with the CPU build of torch:
its wheel ships the c10/ATen CUDA headers but not the CMake-generated
``c10/cuda/impl/cuda_cmake_macros.h``; when that file is missing the check defines
``C10_CUDA_NO_CMAKE_CONFIGURE_FILE`` instead (the generated file only sets Windows DLL export
macros).

With ``--ptx DIR`` it also writes each source's PTX for the first arch to ``DIR/<name>.ptx``
(no cuobjdump / nvdisasm needed): grep it for ``ld.global.cs.v4`` / ``st.global.cs.v4`` to see
that a kernel's accesses are 16-byte vectors, or for ``div.s64`` / ``rem.s64`` per element.

Usage: python tools/check_cuda_compile.py [--arch 80 --arch 90] [--verbose] [--ptx DIR]
       [file.cu ...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvcc() -> str | None:
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    found = shutil.which("nvcc")
    if found:
        candidates.append(found)
    candidates.append("/usr/local/cuda/bin/nvcc")
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def torch_flags() -> list[str]:
    import torch
    from torch.utils import cpp_extension

    flags = []
    for path in cpp_extension.include_paths():
        flags += ["-I", path]
    abi = int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    flags += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DTORCH_EXTENSION_NAME=_C"]
    flags += list(getattr(cpp_extension, "COMMON_NVCC_FLAGS", []))
    generated = [
        os.path.join(path, "c10", "cuda", "impl", "cuda_cmake_macros.h")
        for path in cpp_extension.include_paths()
    ]
    if not any(os.path.exists(path) for path in generated):
        print(
            "note: c10/cuda/impl/cuda_cmake_macros.h is not in this torch (CPU build); "
            "compiling with -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"
        )
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return flags


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_USED = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def demangle(names: list[str], nvcc: str) -> dict[str, str]:
    tool = os.path.join(os.path.dirname(nvcc), "cu++filt")
    if not names or not os.path.exists(tool):
        tool = shutil.which("c++filt")
    if not names or not tool:
        return {}
    result = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = result.stdout.splitlines()
    return dict(zip(names, out, strict=False)) if len(out) == len(names) else {}


def report_ptxas(text: str, nvcc: str, verbose: bool) -> None:
    """One line per kernel and arch: registers, spills."""
    rows = []
    current = None
    for line in text.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = [entry.group(1), entry.group(2), None, None]
            rows.append(current)
            continue
        if current is None:
            continue
        used = _USED.search(line)
        if used:
            current[2] = int(used.group(1))
        spill = _SPILL.search(line)
        if spill:
            current[3] = (int(spill.group(1)), int(spill.group(2)))
    names = demangle(sorted({r[0] for r in rows}), nvcc)
    for name, arch, regs, spill in rows:
        pretty = names.get(name, name)
        pretty = pretty.replace("(anonymous namespace)::", "")
        pretty = pretty.split("(", 1)[0]  # drop the argument list
        spills = f"spill stores {spill[0]} B, loads {spill[1]} B" if spill else "spill ?"
        print(f"  {arch}  {regs if regs is not None else '?':>3} registers  {spills}  {pretty}")
    if verbose or not rows:
        print("\n".join(line for line in text.splitlines() if "ptxas" in line))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", default=None, help="e.g. 80, 90")
    parser.add_argument("--verbose", action="store_true", help="print all ptxas output")
    parser.add_argument(
        "--no-host-compile",
        action="store_true",
        help="nvcc -cuda: compile the device code and check the host code with nvcc's front "
        "end, without the host compiler (CI: 24 vs 32 s a file)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel nvcc (default: cores)")
    parser.add_argument("--ptx", default=None, help="also write each source's PTX to this folder")
    parser.add_argument(
        "sources", nargs="*", help="only these .cu files (default: every csrc/**/*.cu)"
    )
    args = parser.parse_args()

    nvcc = find_nvcc()
    if nvcc is None:
        print("check_cuda_compile: nvcc not found (set CUDA_HOME); skipped")
        return 0
    sources = [os.path.abspath(s) for s in args.sources] or sorted(
        glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True)
    )
    if not sources:
        print("check_cuda_compile: no .cu sources under csrc/; nothing to do")
        return 0
    try:
        flags = torch_flags()
    except ImportError as error:
        print(f"check_cuda_compile: torch is not importable ({error}); skipped")
        return 0

    archs = args.arch or ["80", "90"]
    cuda_include = os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    print(f"nvcc: {nvcc} ({version.strip().splitlines()[-1] if version.strip() else '?'})")

    def compile_one(source: str) -> tuple[str, subprocess.CompletedProcess, float, list[str]]:
        # -cuda: the device code compiled (cicc, ptxas) and the host code parsed and checked by
        # nvcc's front end, without the host compiler's pass over it (a quarter of the time)
        output = ["-cuda", "-o", os.devnull] if args.no_host_compile else ["-c", "-o", os.devnull]
        command = [nvcc, source, *output, "-std=c++20", "-O3", "-lineinfo"]
        command += ["-Xptxas=-v", "-DPORTRAIT_ENGINE_WITH_CUDA=1"]
        for arch in archs:
            command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        command += ["-I", os.path.join(ROOT, "csrc"), "-I", cuda_include] + flags
        start = time.time()
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if args.ptx and result.returncode == 0:
            os.makedirs(args.ptx, exist_ok=True)
            name = os.path.splitext(os.path.basename(source))[0]
            ptx = [nvcc, "-ptx", source, "-o", os.path.join(args.ptx, f"{name}.ptx")]
            ptx += ["-std=c++20", "-O3", "-DPORTRAIT_ENGINE_WITH_CUDA=1", f"-arch=sm_{archs[0]}"]
            ptx += ["-I", os.path.join(ROOT, "csrc"), "-I", cuda_include] + flags
            emitted = subprocess.run(ptx, capture_output=True, text=True, cwd=ROOT)
            if emitted.returncode != 0:
                result = emitted
        return source, result, time.time() - start, command

    # One nvcc per core (each is single-threaded); reports are printed in source order.
    failures = 0
    workers = max(1, min(len(sources), args.jobs or os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for source, result, elapsed, command in pool.map(compile_one, sources):
            relative = os.path.relpath(source, ROOT)
            print(f"== {relative} (sm_{', sm_'.join(archs)})")
            output = result.stdout + result.stderr
            if result.returncode != 0:
                failures += 1
                errors = [line for line in output.splitlines() if "ptxas info" not in line]
                print("\n".join(errors[-80:]))
                print(f"FAILED ({result.returncode}) after {elapsed:.0f}s: {relative}")
                if args.verbose:
                    print(" ".join(command))
                continue
            report_ptxas(output, nvcc, args.verbose)
            # warnings from our own sources only (torch's headers warn about C++20 features)
            warnings = [
                line
                for line in output.splitlines()
                if "warning" in line.lower() and os.path.join(ROOT, "csrc") in line
            ]
            for line in warnings[:20]:
                print("  " + line)
            print(f"ok ({elapsed:.0f}s)", flush=True)
    if failures:
        print(f"check_cuda_compile: {failures} of {len(sources)} file(s) failed")
        return 1
    print(f"check_cuda_compile: {len(sources)} file(s) compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
