"""Build agentfast and its compiled extension ``agentfast._C``.

Environment switches:
  AGENTFAST_CUDA=auto|0|1   compile the CUDA sources (auto: when torch has CUDA and nvcc is found)
  TORCH_CUDA_ARCH_LIST      CUDA architectures, e.g. "9.0" or "8.0;9.0" (default here: 8.0;9.0)
  MAX_JOBS                  parallel ninja jobs
  AGENTFAST_MARCH           -march of the CPU kernels: auto (x86-64-v3 when this CPU has AVX2 + FMA),
                            none, or any -march value (e.g. native, or x86-64-v3 to build for others)

Objects stay in build/ninja/<configuration>/ between builds (pip's editable installs too), so
a rebuild compiles only what changed; `make clean` removes them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
BUILD_INFO = ROOT / "agentfast" / "_build_info.json"
DEFAULT_ARCHS = "8.0;9.0"


def _cuda_requested() -> bool:
    """Decide whether to compile the CUDA sources, honouring AGENTFAST_CUDA."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    mode = os.environ.get("AGENTFAST_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        raise SystemExit(f"AGENTFAST_CUDA must be auto, 0 or 1, got {mode!r}")
    has_toolkit = torch.version.cuda is not None and CUDA_HOME is not None and (
        shutil.which("nvcc") is not None or Path(CUDA_HOME, "bin", "nvcc").exists()
    )
    if mode == "1" and not has_toolkit:
        raise SystemExit(
            "AGENTFAST_CUDA=1 but CUDA cannot be built here: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}. "
            "Install torch's CUDA build and set CUDA_HOME to a toolkit with nvcc."
        )
    return mode == "1" or (mode == "auto" and has_toolkit)


# What -march=x86-64-v3 assumes, as /proc/cpuinfo names it.
_X86_64_V3_FLAGS = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "abm", "xsave"}


def _cpu_arch_flags() -> list[str]:
    """-march for the CPU kernels, honouring AGENTFAST_MARCH (auto: x86-64-v3, i.e. AVX2 + FMA,
    when the building CPU has it, so a build never holds instructions its own machine lacks;
    the kernels fall back to plain loops without AVX2)."""
    mode = os.environ.get("AGENTFAST_MARCH", "").strip() or "auto"
    if mode == "none":
        return []
    if mode != "auto":
        return [f"-march={mode}"]
    if os.uname().machine != "x86_64":
        return []
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return []
    return ["-march=x86-64-v3"] if _X86_64_V3_FLAGS <= flags else []


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / pattern), recursive=True))


def _write_build_info(target: Path, with_cuda: bool, archs: str | None) -> None:
    import torch

    info = {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_archs": archs if with_cuda else None,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "cpu_arch_flags": _cpu_arch_flags(),
    }
    if with_cuda:
        from torch.utils.cpp_extension import CUDA_HOME

        info["cuda_home"] = CUDA_HOME
    target.write_text(json.dumps(info, indent=2) + "\n")


def _ninja_build_dir(with_cuda: bool) -> Path:
    """build/ninja/<cpu|cuda>-<python>-torch<version>: switching between them keeps both warm."""
    import torch

    kind = "cuda" if with_cuda else "cpu"
    return ROOT / "build" / "ninja" / f"{kind}-{sys.implementation.cache_tag}-torch{torch.__version__}"


def _build_ext_class(with_cuda: bool, archs: str | None) -> type:
    """torch's ninja BuildExtension that, once the build succeeded, records what the extension
    was built against next to it (in place for editable installs, else in the wheel)."""
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtensionWithInfo(BuildExtension.with_options(use_ninja=True)):
        def finalize_options(self) -> None:
            super().finalize_options()
            # One lasting ninja folder per configuration (pip's editable builds would otherwise
            # start from an empty temporary one): ninja then recompiles only the sources whose
            # file, included headers or compiler command changed.
            self.build_temp = str(_ninja_build_dir(with_cuda))

        def run(self) -> None:
            super().run()
            target = Path(self.get_ext_fullpath("agentfast._C")).parent / BUILD_INFO.name
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_build_info(target, with_cuda, archs)

    return BuildExtensionWithInfo


def _extensions() -> tuple[list, dict]:
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpp_sources = _sources("csrc/**/*.cpp")
    if not cpp_sources:
        return [], {}
    with_cuda = _cuda_requested()
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]  # torch >= 2.10 headers need C++20
    cxx_flags.extend(_cpu_arch_flags())
    define_macros = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        define_macros.append(("AGENTFAST_WITH_CUDA", None))
        ext = CUDAExtension(
            "agentfast._C",
            cpp_sources + _sources("csrc/**/*.cu"),
            include_dirs=[str(ROOT / "csrc")],
            define_macros=define_macros,
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo",
                         "--expt-relaxed-constexpr"],
            },
            extra_link_args=["-fopenmp"],
        )
    else:
        archs = None
        ext = CppExtension(
            "agentfast._C",
            cpp_sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": _build_ext_class(with_cuda, archs)}


ext_modules, cmdclass = _extensions()

setup(
    packages=[
        "agentfast",
        "agentfast.attention",
        "agentfast.attention.backends",
        "agentfast.nn",
        "agentfast.models",
        "agentfast.data",
        "agentfast.training",
        "agentfast.pipeline",
        "agentfast.decoders",
        "agentfast.integrations",
        "agentfast.integrations.transformers",
        "agentfast.kernels",
    ],
    package_dir={"agentfast.kernels": "kernels"},
    package_data={"agentfast": ["_build_info.json", "py.typed"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
