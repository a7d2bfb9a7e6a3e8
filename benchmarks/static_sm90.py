"""Static kernel report: every attention kernel compiled for sm_90 and sm_80, its machine code read.

No GPU is needed. The Triton kernels (forward, delta, dQ, dK/dV and the mask-preparation
kernels) are compiled exactly as the launchers in ``kernels/flash_attention.py`` would compile
them: the launchers run on CPU tensors with every kernel launch recorded instead of executed,
and each recorded launch is compiled for a ``GPUTarget("cuda", arch, 32)`` with the argument
specialisation Triton's JIT applies (integers equal to 1 become constants, multiples of 16
and 16-byte aligned pointers are marked divisible by 16), once per configuration the
autotuner keeps after its pruner. The CUDA kernels are every ``__global__`` function nvcc
produces from ``csrc/cuda/*.cu`` (found by their symbols, so the report follows the sources as
they change).

Per kernel and per loop path it reports: registers, spills, shared memory, resident blocks
per SM, tensor-core instructions per iteration (HGMMA on sm_90, HMMA on sm_80), how K/V tiles
reach shared memory (TMA, cp.async = LDGSTS, or synchronous LDG + STS), shared loads and stores,
barriers, and warp-instructions per tensor-core MFLOP:

    For one path through the steady-state loop body (the innermost loop that holds the
    tensor-core instructions; the software pipeliner's prologue and epilogue are outside it),
    count the SASS instructions one warp issues in one iteration (NOPs excluded; branches
    inside the body give separate paths, e.g. a tile that is skipped or masked), and divide by
    that warp's share of the tensor-core FLOPs of the iteration, in millions. HMMA m16n8kK is
    2*16*8*K FLOPs per warp; an HGMMA 64xNxK is shared by the 4 warps of a warpgroup, 2*64*N*K/4
    per warp. All warps of a block run the same body, so this is also the block's ratio.

Loop nests: where a tensor-core loop sits inside another loop (inner loops the compiler did not
unroll, or the dK/dV kernel's walk over a query-head group), the figures are those of the
inner loop; the report names the enclosing loop's size, so an inner loop covering part of a
tile is not mistaken for a whole tile.

Paths: "full" tiles need no mask, "partial" tiles apply the agent rule (and the seq_len edge),
"diagonal" tiles the causal rule (and the agent rule when agents are on). A row's
``flops_check`` compares the tensor-core FLOPs found in the loop with the FLOPs of the tile the
kernel computes per iteration (forward: 4*BLOCK_M*BLOCK_N*BLOCK_D; dQ: 6x; dK/dV: 8x).
The CUDA kernels have two loops: "partial" (the mask applied: causal and agent rules, the
seq_len edge; its costliest path is shown) and "full"; their dtype, head dim and tile shape
come from the template arguments in the kernel's name.

Tools: Triton's compiler and its bundled ptxas, cuobjdump and nvdisasm
(``triton/backends/nvidia/bin`` in the triton wheel); nvcc from the CUDA toolkit in
``$CUDA_HOME`` (default /usr/local/cuda) plus torch's headers for the CUDA sources; c++filt
(binutils) to demangle names when present. See ``benchmarks/sass_analysis.py``.

    python benchmarks/static_sm90.py                      # the full report (tens of minutes on 2 cores)
    python benchmarks/static_sm90.py --quick              # fp16, D=64, sm_90, primary configs
    python benchmarks/static_sm90.py --tutorial FILE      # + the Triton tutorial's fused attention
    python benchmarks/static_sm90.py --parts cuda --out B # one part; then merge the runs' JSON:
    python benchmarks/static_sm90.py --from-json A/static.json B/static.json

Results: ``static.json``, ``static.md`` and ``static.png`` in --out
(default ``benchmarks/results/static-sm90/``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import importlib.util
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compiled kernels, never the interpreter, in this process
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")  # where nvcc and the CUDA headers live

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sass_analysis as sa  # noqa: E402
from agentfast.attention.backends.triton_fused import load_kernels  # noqa: E402

load_kernels()
from agentfast.kernels import compile_check as cc  # noqa: E402
from agentfast.kernels.compile_check import MASKS, CompileJob  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "static-sm90"
KERNELS_MODULE = cc.fa.__name__
# The tile each attention kernel computes per loop iteration, in units of BLOCK_M*BLOCK_N*BLOCK_D
# FLOPs: forward QK^T and PV; dQ: QK^T, dO V^T, dS K; dK/dV: those three and P^T dO.
TILE_FLOPS = {"forward": 4, "dq": 6, "dkdv": 8}


# ----------------------------------------------------------------------------- our Triton kernels


def _config_label(config) -> str:
    if config is None:
        return "-"
    blocks = "x".join(str(v) for k, v in sorted(config.kwargs.items()) if k.startswith("BLOCK"))
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


def triton_jobs(archs, dtypes, head_dims, masks, shapes, primary_only: bool,
                kernels: set[str] | None = None, groups: tuple[int, ...] = (1,)) -> list[CompileJob]:
    """Compile jobs for every kernel launch the launchers make for these settings (``kernels``:
    only these, by short name: forward, dq, dkdv, delta, ...). ``groups`` > 1 adds grouped-query
    launches (query heads per kv head), in the first kept config only."""
    jobs: dict[tuple, CompileJob] = {}
    for arch, dtype, head_dim, mask, shape, group in itertools.product(archs, dtypes, head_dims, masks, shapes,
                                                                        groups):
        launches = cc.record_launches(dtype, head_dim, mask, shape, backward=shape == "prefill",
                                      heads=2 * group, kv_heads=2)
        for name, (kernel, calls) in launches.items():
            if kernels and _short_name(name) not in kernels:
                continue
            for args, kwargs in calls:
                configs = cc.kept_configs(kernel, args, kwargs)
                for rank, config in enumerate(configs[:1] if primary_only or group > 1 else configs):
                    labels = dict(source="triton", kernel=_short_name(name), dtype=dtype, head_dim=head_dim,
                                  mask=mask + (f" gqa{group}" if group > 1 else ""), shape=shape,
                                  config=_config_label(config), primary=rank == 0 and group == 1)
                    job = cc.job_from_launch(KERNELS_MODULE, name, kernel, args, kwargs, config, arch, labels)
                    if _uses_only_launch_constants(labels["kernel"]):
                        labels.update(dtype="-", head_dim="-", mask="-")
                    jobs.setdefault(job.key(), job)
    return list(jobs.values())


def _short_name(attribute: str) -> str:
    return attribute.strip("_").removesuffix("_kernel")


def _uses_only_launch_constants(kernel: str) -> bool:
    """Mask-preparation kernels do not depend on the attention dtype or head dim."""
    return kernel not in TILE_FLOPS and kernel != "delta"


# ----------------------------------------------------------------------------- the tutorial


def tutorial_jobs(path: Path, archs, head_dims, primary_only: bool) -> list[CompileJob]:
    """The Triton tutorial's fused attention (06-fused-attention.py) at its benchmark's shapes:
    fp16, batch 4, 32 heads, N = 4096, causal. Forward: its block-pointer and TMA kernels at
    128 x 64 tiles (the first of its autotune configs at that shape; ``primary_only=False``
    compiles them all); backward: its fixed launch (32x128 / 128x32 tiles, 4 warps, 5 stages)."""
    import torch

    module = _import_path(path)
    batch, heads, n = 4, 32, 4096
    jobs = []
    for arch in archs:
        for head_dim in head_dims:
            q = torch.empty(batch, heads, n, head_dim, dtype=torch.float16)
            lse = torch.empty(batch, heads, n, dtype=torch.float32)
            strides = [*q.stride()] * 4
            forward_args = (q, q, q, 0.5, lse, q, *strides, batch, heads)
            forward_kwargs = dict(N_CTX=n, HEAD_DIM=head_dim, CAUSAL=True)
            kernel = module._attn_fwd
            for rank, config in enumerate(_tutorial_configs(kernel, head_dim, primary_only)):
                labels = dict(source="tutorial", kernel="forward", dtype="fp16", head_dim=head_dim, mask="causal",
                              shape="prefill", config=_config_label(config), primary=rank == 0)
                jobs.append(cc.job_from_launch(str(path), "_attn_fwd", kernel, forward_args, dict(forward_kwargs),
                                            config, arch, labels))
            tma = getattr(module, "_attn_fwd_tma", None)
            if tma is not None and arch >= 90:
                from triton.tools.tensor_descriptor import TensorDescriptor

                flat = q.view(-1, head_dim)
                for rank, config in enumerate(_tutorial_configs(tma, head_dim, primary_only)):
                    block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
                    q_desc, kv_desc = (TensorDescriptor(flat, list(flat.shape), [head_dim, 1], [rows, head_dim])
                                       for rows in (block_m, block_n))
                    args = (0.5, lse, batch, heads, q_desc, kv_desc, kv_desc, q_desc, n)
                    labels = dict(source="tutorial", kernel="forward_tma", dtype="fp16", head_dim=head_dim,
                                  mask="causal", shape="prefill", config=_config_label(config), primary=rank == 0)
                    jobs.append(cc.job_from_launch(str(path), "_attn_fwd_tma", tma, args,
                                                dict(HEAD_DIM=head_dim, FP8_OUTPUT=False, STAGE=3), config, arch,
                                                labels))
            backward_args = (q, q, q, 0.5, q, q, q, q, lse, lse, *q.stride(), heads, n)
            backward_kwargs = dict(BLOCK_M1=32, BLOCK_N1=128, BLOCK_M2=128, BLOCK_N2=32, BLK_SLICE_FACTOR=2,
                                   HEAD_DIM=head_dim, num_warps=4, num_stages=5)
            labels = dict(source="tutorial", kernel="backward", dtype="fp16", head_dim=head_dim, mask="causal",
                          shape="prefill", config="32x128/128x32 w4 s5", primary=True)
            jobs.append(cc.job_from_launch(str(path), "_attn_bwd", module._attn_bwd, backward_args, backward_kwargs,
                                        None, arch, labels))
    return jobs


def _tutorial_configs(kernel, head_dim: int, primary_only: bool) -> list:
    configs = list(getattr(kernel, "configs", [None]))
    # The kernels static_assert BLOCK_N <= HEAD_DIM; its autotuner drops the others at compile.
    configs = [c for c in configs if c is None or c.kwargs["BLOCK_N"] <= head_dim]
    # The tutorial's own preference for H100 first: 128 x 64 tiles, then the rest as listed.
    configs.sort(key=lambda c: (0 if c is not None and (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) == (128, 64)
                                else 1))
    return configs[:1] if primary_only else configs


def _import_path(path: Path):
    spec = importlib.util.spec_from_file_location(f"static_{path.stem.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- compiling


def _load_module(name: str):
    if name.endswith(".py"):
        key = f"static_{Path(name).stem.replace('-', '_')}"
        return sys.modules.get(key) or _import_path(Path(name))
    return importlib.import_module(name)


def compile_and_read(job: CompileJob) -> dict:
    """Compile one job and read its cubin; runs in a worker process."""
    row = dict(job.labels, arch=f"sm_{job.arch}", num_warps=job.num_warps, num_stages=job.num_stages)
    try:
        compiled = cc.compile_job(job, getattr(_load_module(job.module), job.kernel))
    except Exception as exc:  # a kernel that does not compile is a finding, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        return row
    cubin = compiled.asm["cubin"]
    codes = sa.disassemble(cubin)
    usage = sa.resources(cubin)
    name = compiled.metadata.name
    code, res = codes[name], usage[name]
    shared = compiled.metadata.shared + res.shared_static
    row.update(_resource_fields(job.arch, res, shared, code))
    block_m, block_n, block_d = (job.constexprs.get(k) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D"))
    expected = None
    if job.labels.get("source") == "triton" and job.labels["kernel"] in TILE_FLOPS and block_m and block_n:
        expected = TILE_FLOPS[job.labels["kernel"]] * block_m * block_n * block_d
    row["paths"] = _label_paths(code, job, expected)
    return row


def _resource_fields(arch: int, res: sa.Resources, shared: int, code: sa.Code) -> dict:
    occupancy = sa.blocks_per_sm(arch, res.registers, res.threads, shared)
    return dict(registers=res.registers, spill_bytes=res.local_bytes, spill_ops=sa.spill_instructions(code),
                shared_bytes=shared, threads=res.threads, blocks_per_sm=occupancy["blocks"],
                occupancy_limited_by=occupancy["limited_by"])


def _path_names(job: CompileJob, loops: int) -> list[str] | None:
    """Names of the tensor-core loops, in code order, for our kernels and the tutorial's."""
    labels = job.labels
    if labels.get("source") == "tutorial":
        return {"forward": ["full|diagonal"], "forward_tma": ["full", "diagonal"],
                "backward": ["dK/dV diagonal", "dK/dV full", "dQ diagonal", "dQ full"]}.get(labels["kernel"])
    kernel = labels["kernel"]
    if labels.get("source") == "cuda":
        return _cuda_loop_names(kernel, loops)
    if kernel not in TILE_FLOPS:
        return None
    names = _TRITON_LOOP_NAMES.get((kernel, bool(job.constexprs.get("HAS_AGENTS")),
                                    bool(job.constexprs.get("CAUSAL"))))
    return names


# Loop order of the kernels. Causal / seq_lens only: forward and dQ walk the key tiles every
# query sees by position, then the tiles on the diagonal or seq_len edge; dK/dV walks the
# query tiles across the diagonal first. With agents each walks its tile lists: full,
# partial (agent rule), then diagonal (causal and agent rules).
_TRITON_LOOP_NAMES = {
    ("forward", False, True): ["full", "diagonal"],
    ("forward", False, False): ["full", "edge"],
    ("forward", True, True): ["full", "partial", "diagonal"],
    ("forward", True, False): ["full", "partial"],
    ("dq", False, True): ["full", "diagonal"],
    ("dq", False, False): ["full", "edge"],
    ("dq", True, True): ["full", "partial", "diagonal"],
    ("dq", True, False): ["full", "partial"],
    ("dkdv", False, True): ["diagonal", "full"],
    ("dkdv", False, False): ["edge", "full"],
    ("dkdv", True, True): ["full", "partial", "diagonal"],
    ("dkdv", True, False): ["full", "partial"],
}


# The attention kernels of csrc/cuda (forward_kernel<T, HD, tile sizes..., warps, ...>, the same for
# dq_kernel and dkdv_kernel) walk their tile list in two loops: partial tiles (mask applied),
# then full tiles (no mask code).
_CUDA_KERNEL = re.compile(r"^(forward|dq|dkdv)_kernel<(__half|__nv_bfloat16|float), (\d+), (\d+), (\d+)")
_CUDA_DTYPES = {"__half": "fp16", "__nv_bfloat16": "bf16", "float": "fp32"}


def _cuda_loop_names(kernel: str, loops: int) -> list[str] | None:
    return ["partial", "full"] if _CUDA_KERNEL.match(kernel) and loops == 2 else None


def _cuda_labels(kernel: str, warps: int) -> dict:
    """dtype, head_dim and config (tile rows x columns, warps) of a csrc/cuda attention kernel."""
    match = _CUDA_KERNEL.match(kernel)
    if match is None:
        return {}
    _, dtype, head_dim, rows, cols = match.groups()
    return dict(dtype=_CUDA_DTYPES[dtype], head_dim=int(head_dim), config=f"{rows}x{cols} w{warps}")


def _label_paths(code: sa.Code, job: CompileJob, expected_flops: int | None) -> list[dict]:
    loops = [loop for loop in sa.innermost_loops(code) if loop.compute_paths]
    names = _path_names(job, len(loops))
    if names is not None and len(names) != len(loops):
        names = None
    rows = []
    for i, loop in enumerate(loops):
        loop_name = names[i] if names else f"loop {i + 1}"
        for name, path in _name_paths(loop_name, loop.compute_paths):
            entry = dict(path=name, loop=i + 1, **path.summary())
            entry["skip_paths"] = sum(1 for p in loop.paths if not p.mma)
            if loop.enclosing_instructions is not None:
                entry["nested_in"] = dict(instructions=loop.enclosing_instructions, loops=loop.enclosing_loops)
            if expected_flops is not None:
                entry["flops_check"] = path.flops_per_warp * job.num_warps == expected_flops
            rows.append(entry)
    return rows


def _name_paths(loop_name: str, compute: list[sa.LoopPath]) -> list[tuple[str, sa.LoopPath]]:
    """Names for a loop's tensor-core paths (cheapest first). "a|b": the loop holds two tile
    variants behind a branch, the cheapest path is a, the costliest b. A single name: the
    costliest path (an upper bound where branches only skip a few instructions). Unnamed
    loops list every path."""
    variants = loop_name.split("|")
    if len(variants) == 2 and len(compute) >= 2:
        return [(variants[0], compute[0]), (variants[1], compute[-1])]
    if len(variants) == 1 and not loop_name.startswith("loop "):
        return [(loop_name, compute[-1])]
    if len(compute) == 1:
        return [(loop_name, compute[0])]
    return [(f"{loop_name} path {j + 1}", path) for j, path in enumerate(compute)]


def run_jobs(jobs: list[CompileJob], workers: int, progress=print) -> list[dict]:
    if workers <= 1:
        rows = []
        for i, job in enumerate(jobs):
            rows.append(compile_and_read(job))
            progress(f"[{i + 1}/{len(jobs)}] {_describe(rows[-1])}")
        return rows
    rows = [None] * len(jobs)
    import multiprocessing

    # fork: the workers inherit the imported kernels; they compile only (no torch threads used)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(compile_and_read, job): i for i, job in enumerate(jobs)}
        for done, future in enumerate(concurrent.futures.as_completed(futures)):
            rows[futures[future]] = future.result()
            progress(f"[{done + 1}/{len(jobs)}] {_describe(rows[futures[future]])}")
    return rows


def _describe(row: dict) -> str:
    head = (f"{row['source']} {row['kernel']} {row['arch']} {row['dtype']} D={row['head_dim']} {row['mask']} "
            f"{row['config']}")
    if "error" in row:
        return f"{head}: ERROR {row['error']}"
    paths = ", ".join(f"{p['path']} {p['warp_instructions_per_mflop']}" for p in row.get("paths", []))
    return f"{head}: {row['registers']} regs, {row['shared_bytes'] // 1024} KB, {paths}"


# ----------------------------------------------------------------------------- CUDA sources


def nvcc_flags(arch: int) -> list[str]:
    """The flags setup.py and torch's CUDAExtension give nvcc, for one architecture, cubin out."""
    from torch.utils import cpp_extension

    try:
        includes = cpp_extension.include_paths(device_type="cuda")
    except TypeError:  # older torch
        includes = cpp_extension.include_paths(cuda=True)
    flags = ["-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++20", "--use_fast_math", "-lineinfo",
             "--expt-relaxed-constexpr", "-DAGENTFAST_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
             "-DTORCH_API_INCLUDE_EXTENSION_H", *cpp_extension.COMMON_NVCC_FLAGS]
    flags += [f"-I{p}" for p in [str(ROOT / "csrc"), *includes, sysconfig.get_paths()["include"]]]
    return list(dict.fromkeys(flags))


def compile_cuda_source(source: Path, arch: int) -> bytes:
    nvcc = sa.find_tool("nvcc")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.cubin"
        result = subprocess.run([str(nvcc), *nvcc_flags(arch), "-o", str(out), str(source)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"nvcc failed on {source.name} for sm_{arch}:\n{result.stderr[-3000:]}")
        return out.read_bytes()


def cuda_rows(sources: list[Path], archs, progress=print) -> list[dict]:
    """Every kernel nvcc makes of the CUDA sources: resources and tensor-core loops. The
    dynamic shared memory a kernel gets is set by the host at launch and is not in the
    cubin; shared_bytes and blocks_per_sm count static shared memory only."""
    rows = []
    for source in sources:
        for arch in archs:
            started = time.time()
            try:
                cubin = compile_cuda_source(source, arch)
            except Exception as exc:
                rows.append(dict(source="cuda", file=source.name, arch=f"sm_{arch}", kernel="-", error=str(exc)[-500:]))
                continue
            codes, usage = sa.disassemble(cubin), sa.resources(cubin)
            for symbol, code in codes.items():
                res = usage.get(symbol, sa.Resources())
                row = dict(source="cuda", file=source.name, arch=f"sm_{arch}", symbol=symbol,
                           kernel=_short_kernel_name(sa.demangle(symbol)), dtype="-", head_dim="-", mask="-",
                           config="-", shape="-", primary=True, num_warps=(res.threads or 0) // 32)
                row.update(_cuda_labels(row["kernel"], row["num_warps"]))
                row.update(_resource_fields(arch, res, res.shared_static, code))
                row["dynamic_shared"] = "set at launch (not in the cubin)"
                job = CompileJob("", "", arch, {}, {}, {}, row["num_warps"], 0,
                                 dict(source="cuda", kernel=row["kernel"]))
                row["paths"] = _label_paths(code, job, None)
                rows.append(row)
            progress(f"cuda {source.name} sm_{arch}: {len(codes)} kernels in {time.time() - started:.0f} s")
    return rows


def _short_kernel_name(demangled: str) -> str:
    """'void ns::(anonymous namespace)::forward_kernel<__half, 64, 64, 64, true>(Args)' ->
    'forward_kernel<__half, 64, 64, 64, true>'."""
    text = demangled.removeprefix("void ")
    depth, cut = 0, len(text)
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not text[i:].startswith("(anonymous"):
            cut = i
            break
    text = text[:cut]
    depth, start = 0, 0
    for i in range(len(text) - 1):
        if text[i] == "<":
            depth += 1
        elif text[i] == ">":
            depth -= 1
        elif text[i:i + 2] == "::" and depth == 0:
            start = i + 2
    return text[start:]


# ----------------------------------------------------------------------------- report


def _tool_versions() -> dict:
    import triton
    import torch

    versions = {"triton": triton.__version__, "torch": torch.__version__}
    for tool in ("nvdisasm", "cuobjdump", "nvcc"):
        try:
            text = subprocess.run([str(sa.find_tool(tool)), "--version"], capture_output=True, text=True).stdout
            versions[tool] = next((line.strip() for line in text.splitlines() if "release" in line), text.strip()[-60:])
        except sa.ToolMissing:
            versions[tool] = "missing"
    return versions


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_TABLE_HEAD = ("| kernel | mask | D | config | path | instr/iter | MMA/iter | warp-instr/MFLOP | regs | spills | "
               "smem KB | blocks/SM | K/V load | LDS | STS | BAR |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _table_rows(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        mask = row.get("mask", "-") + (f" ({row['shape']})" if row.get("shape") not in ("prefill", "-", None) else "")
        base = f"| {row['kernel']} | {mask} | {row.get('head_dim', '-')} | {row.get('config', '-')} "
        if "error" in row:
            lines.append(base + f"| error: {row['error'][:80]} |" + " |" * 11)
            continue
        spills = row["spill_bytes"] or row["spill_ops"]
        common = (f"| {row['registers']} | {spills} | {row['shared_bytes'] / 1024:.0f} | "
                  f"{_fmt(row['blocks_per_sm'])} ")
        if not row["paths"]:
            lines.append(base + "| (no tensor-core loop) | | | " + common + "| | | | |")
        for path in row["paths"]:
            name = path["path"]
            if "nested_in" in path:  # an inner loop: its figures cover part of a tile
                outer = path["nested_in"]
                name += f" (inside a {outer['instructions']}-instruction loop with {outer['loops']} inner loops)"
            lines.append(base + f"| {name} | {path['instructions']} | {path['tensor_core_instructions']} | "
                         f"{_fmt(path['warp_instructions_per_mflop'])} " + common +
                         f"| {path['load_mode']} | {path['shared_loads']} | {path['shared_stores']} | "
                         f"{path['barriers'] + path['mbarrier_ops']} |")
    return lines


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Static kernel report (sm_90 / sm_80, no GPU)", "",
             "Generated by " + " and ".join(f"`python benchmarks/static_sm90.py {argv}`"
                                            for argv in meta["argv"].split(" + ")) + " with "
             + ", ".join(f"{k} {v}" for k, v in meta["tools"].items()) + ".", "",
             "warp-instr/MFLOP: SASS instructions one warp issues per iteration of the steady-state loop "
             "on that path, divided by its share of the iteration's tensor-core MFLOPs (lower is better; "
             "definition in the script's docstring). MMA/iter: HGMMA (sm_90) or HMMA (sm_80) per warp per "
             "iteration. smem: static + dynamic shared memory per block (CUDA: static only; the host sets the "
             "dynamic part at launch). K/V load: how tiles reach shared memory inside the loop. "
             "LDS/STS/BAR: shared loads, shared stores and barriers per iteration. Primary config: the first "
             "the autotuner's pruner keeps for a 4096-token prefill (the JSON has every kept config).", ""]
    groups = [
        ("Tutorial baseline (Triton 06-fused-attention, fp16, causal)",
         lambda r: r["source"] == "tutorial" and r.get("primary")),
        ("Triton kernels, primary configs", lambda r: r["source"] == "triton" and r.get("primary")),
        ("Triton kernels, grouped-query attention (query heads per kv head: gqaG), first kept config",
         lambda r: r["source"] == "triton" and "gqa" in str(r.get("mask"))),
        ("Triton kernels, the other kept configs",
         lambda r: r["source"] == "triton" and not r.get("primary") and "gqa" not in str(r.get("mask"))),
        ("CUDA kernels (csrc/cuda)", lambda r: r["source"] == "cuda"),
    ]
    lines += _agent_ratios(rows)
    for title, keep in groups:
        chosen = [r for r in rows if keep(r)]
        if not chosen:
            continue
        lines += [f"## {title}", ""]
        if title.startswith("CUDA"):
            lines += _cuda_summary(chosen)
            continue
        for arch in sorted({r["arch"] for r in chosen}, reverse=True):
            for dtype in sorted({str(r.get("dtype")) for r in chosen if r["arch"] == arch}):
                subset = [r for r in chosen if r["arch"] == arch and str(r.get("dtype")) == dtype]
                lines += [f"### {arch}, {dtype}", "", _TABLE_HEAD, *_table_rows(subset), ""]
    return "\n".join(lines) + "\n"


def _cuda_summary(rows: list[dict]) -> list[str]:
    """One line per CUDA kernel: its resources and its tensor-core loops' paths: the named loops
    of the attention kernels (partial and full tiles, the costliest path of each), else the
    spread of the paths (a loop that branches inside has many; the JSON lists every one)."""
    lines = ["Per kernel: the attention kernels' two tensor-core loops (partial tiles, the costliest path; "
             "full tiles), other kernels' paths (branches inside the loop body) from the cheapest "
             "to the costliest; K/V load: how tiles reach shared memory, counted over the paths; LDS / "
             "STS / BAR of the cheapest path. Every path is in the JSON.", "",
             "| kernel | arch | regs | spills | static smem KB | blocks/SM | paths | warp-instr/MFLOP "
             "per loop, or cheapest / median / costliest | MMA/iter | K/V load (paths) | LDS / STS / BAR |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["arch"] != "sm_90", str(r.get("kernel")))):
        if "error" in row:
            lines.append(f"| {row.get('file', '-')} | {row['arch']} | error: {row['error'][:80]} |" + " |" * 8)
            continue
        base = (f"| {row['kernel']} | {row['arch']} | {row['registers']} | {row['spill_bytes'] or row['spill_ops']} | "
                f"{row['shared_bytes'] / 1024:.0f} | {_fmt(row['blocks_per_sm'])} ")
        paths = sorted((p for p in row["paths"] if p["warp_instructions_per_mflop"]),
                       key=lambda p: p["warp_instructions_per_mflop"])
        if not paths:
            lines.append(base + "| (no tensor-core loop) | | | | |")
            continue
        ratios = [p["warp_instructions_per_mflop"] for p in paths]
        modes = Counter(p["load_mode"] for p in paths)
        cheapest = paths[0]
        if _cuda_loop_names(row["kernel"], len(paths)) == [p["path"] for p in row["paths"]]:
            spread = " / ".join(f"{p['path']} {p['warp_instructions_per_mflop']:.0f}" for p in row["paths"])
        else:
            spread = f"{ratios[0]:.0f} / {statistics.median(ratios):.0f} / {ratios[-1]:.0f}"
        lines.append(base + f"| {len(paths)} | {spread} | "
                     f"{cheapest['tensor_core_instructions']} | "
                     + ", ".join(f"{mode} {count}" for mode, count in modes.most_common()) +
                     f" | {cheapest['shared_loads']} / {cheapest['shared_stores']} / "
                     f"{cheapest['barriers'] + cheapest['mbarrier_ops']} |")
    return lines + [""]


def _agent_ratios(rows: list[dict]) -> list[str]:
    """Agent-masked against causal-only warp-instructions per MFLOP, primary configs: full
    tiles against full tiles; partial and diagonal tiles against causal's diagonal tiles."""
    def paths(row):
        return {p["path"]: p["warp_instructions_per_mflop"] for p in row.get("paths", [])}

    lines = []
    for row in rows:
        if row["source"] != "triton" or not row.get("primary") or row.get("mask") != "agents" or "error" in row:
            continue
        causal = next((r for r in rows if r["source"] == "triton" and r.get("primary") and r.get("mask") == "causal"
                       and all(r.get(k) == row.get(k) for k in ("kernel", "arch", "dtype", "head_dim", "shape"))),
                      None)
        if causal is None or "error" in causal:
            continue
        mine, base = paths(row), paths(causal)
        cells = []
        for path, reference in (("full", "full"), ("partial", "diagonal"), ("diagonal", "diagonal")):
            if mine.get(path) and base.get(reference):
                cells.append(f"{mine[path]:.0f} / {base[reference]:.0f} = {mine[path] / base[reference]:.2f}")
            else:
                cells.append("-")
        lines.append(f"| {row['kernel']} | {row.get('shape', '-')} | {row['arch']} | {row['dtype']} | {row['head_dim']} | "
                     + " | ".join(cells)
                     + f" | {causal['registers']} / {row['registers']} | {causal['shared_bytes'] // 1024} / "
                     f"{row['shared_bytes'] // 1024} |")
    if not lines:
        return []
    return ["## Agent-masked against causal-only (primary configs)", "",
            "Warp-instructions per tensor-core MFLOP, agents / causal. Agents' partial and diagonal tiles "
            "are compared with causal's diagonal tiles (its only masked ones).", "",
            "| kernel | shape | arch | dtype | D | full | partial | diagonal | regs causal / agents | "
            "smem KB causal / agents |", "|---|---|---|---|---|---|---|---|---|---|", *lines, ""]


def plot(rows: list[dict], path: Path) -> None:
    """Warp-instructions per MFLOP per kernel path (sm_90, fp16, D=64, prefill, primary
    configs), with the tutorial's figures as reference lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    chosen = [r for r in rows if r["arch"] == "sm_90" and r.get("primary") and "error" not in r
              and r["source"] == "triton" and r.get("dtype") == "fp16" and r.get("head_dim") == 64
              and r.get("shape") == "prefill"]
    bars = [(f"{r['kernel']}\n{p['path']}\n{r['mask']}", p["warp_instructions_per_mflop"])
            for r in chosen for p in r["paths"] if p["warp_instructions_per_mflop"]]
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars)), 4.5))
    ax.bar(range(len(bars)), [v for _, v in bars], color=["tab:blue" if "causal" in n else "tab:orange"
                                                          for n, _ in bars])
    ax.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=7)
    tutorial = [r for r in rows if r["source"] == "tutorial" and r["arch"] == "sm_90" and r.get("primary")
                and r.get("head_dim") == 64 and "error" not in r]
    for r, style in zip(tutorial, ("--", ":", "-.")):
        best = min((p["warp_instructions_per_mflop"] for p in r["paths"] if p["warp_instructions_per_mflop"]),
                   default=None)
        if best:
            ax.axhline(best, linestyle=style, color="gray", label=f"tutorial {r['kernel']} ({best:.0f})")
    ax.set_ylabel("warp-instructions per tensor-core MFLOP")
    ax.set_title("Triton attention kernels, sm_90, fp16, D=64, prefill (lower is better)")
    if tutorial:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="90,80", help="compute capabilities (default 90,80)")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--masks", default="causal,agents", help=f"of {', '.join(MASKS)}")
    parser.add_argument("--shapes", default="prefill,decode",
                        help="prefill (4096 x 4096, forward and backward) and/or decode (1 x 4096, forward)")
    parser.add_argument("--configs", choices=["all", "primary"], default="all",
                        help="every autotune config the pruner keeps, or the first one only")
    parser.add_argument("--parts", default="triton,cuda", help="triton and/or cuda")
    parser.add_argument("--kernels", help="only these Triton kernels (forward, dq, dkdv, delta, ...)")
    parser.add_argument("--groups", default="1,4", help="query heads per kv head (grouped-query attention; "
                        "groups past 1 in the first kept config only)")
    parser.add_argument("--cuda-sources", type=Path, nargs="*",
                        help="CUDA files to compile (default csrc/cuda/*.cu)")
    parser.add_argument("--tutorial", type=Path, help="a file with the Triton tutorial's kernels (_attn_fwd, "
                        "_attn_bwd, optionally _attn_fwd_tma), importable without a GPU, for the baseline")
    parser.add_argument("--quick", action="store_true", help="fp16, D=64, sm_90, prefill, primary configs, no GQA")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--dry-run", action="store_true", help="list the Triton compiles and stop")
    parser.add_argument("--from-json", type=Path, nargs="+",
                        help="only write NAME.json, .md and .png of earlier runs' JSON files, merged in order "
                             "(e.g. the Triton and the CUDA parts run separately)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default="static", help="file stem of the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.archs, args.dtypes, args.head_dims, args.shapes, args.configs = "90", "fp16", "64", "prefill", "primary"
        args.groups = "1"
    return args


def write_report(rows: list[dict], meta: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown(rows, meta))
    plot(rows, out / f"{name}.png")


def merge_reports(reports: list[dict]) -> tuple[list[dict], dict]:
    """Rows of several runs in order, and one meta: the command lines joined with " + ", the
    tools of every run (a tool whose version differs between runs keeps each version), the
    seconds summed."""
    rows = [row for report in reports for row in report["rows"]]
    tools: dict[str, str] = {}
    for report in reports:
        for tool, version in report["meta"]["tools"].items():
            if tools.get(tool, version) != version and version not in tools[tool].split(" / "):
                tools[tool] = f"{tools[tool]} / {version}"
            else:
                tools.setdefault(tool, version)
    meta = dict(argv=" + ".join(report["meta"]["argv"] for report in reports), tools=tools,
                seconds=sum(report["meta"].get("seconds", 0) for report in reports))
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    archs = [int(a) for a in args.archs.split(",")]
    dtypes, head_dims = args.dtypes.split(","), [int(d) for d in args.head_dims.split(",")]
    masks, shapes, parts = args.masks.split(","), args.shapes.split(","), args.parts.split(",")
    for mask in masks:
        if mask not in MASKS:
            raise SystemExit(f"unknown mask {mask!r}; choose from {', '.join(MASKS)}")
    if args.from_json is not None:
        rows, meta = merge_reports([json.loads(path.read_text()) for path in args.from_json])
        write_report(rows, meta, args.out, args.name)
        return 0
    started = time.time()
    rows: list[dict] = []
    jobs: list[CompileJob] = []
    if "triton" in parts:
        kernels = set(args.kernels.split(",")) if args.kernels else None
        jobs += triton_jobs(archs, dtypes, head_dims, masks, shapes, args.configs == "primary", kernels,
                            tuple(int(g) for g in args.groups.split(",")))
    if args.tutorial is not None:
        jobs += tutorial_jobs(args.tutorial.resolve(), archs, head_dims, primary_only=True)
    print(f"{len(jobs)} Triton compiles on {args.jobs} workers", flush=True)
    if args.dry_run:
        for job in jobs:
            print(" ", " ".join(f"{k}={v}" for k, v in job.labels.items()), f"sm_{job.arch}")
        return 0
    rows += run_jobs(jobs, args.jobs, progress=lambda line: print(line, flush=True))
    if "cuda" in parts:
        sources = args.cuda_sources or sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
        rows += cuda_rows(sources, archs,
                          progress=lambda line: print(line, flush=True))
    meta = dict(argv=" ".join(argv), tools=_tool_versions(), seconds=round(time.time() - started))
    write_report(rows, meta, args.out, args.name)
    errors = [r for r in rows if "error" in r]
    print(f"{len(rows)} kernels in {meta['seconds']} s; results in {args.out}"
          + (f"; {len(errors)} failed to compile" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
