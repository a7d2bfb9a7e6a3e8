"""Compile the attention kernels for a GPU architecture without a GPU, as the launchers would.

The interpreter checks what the kernels compute, not that the compiler accepts them (type
rules of branches inside loops, layouts, shared memory). Here the launchers of
``flash_attention`` run on CPU tensors with every kernel launch recorded instead of executed
(``recording``); each recorded launch becomes a ``CompileJob`` carrying the argument
specialisation Triton's JIT would apply (integers equal to 1 become constants, multiples of
16 and 16-byte aligned pointers are marked divisible by 16) and one of the autotuner's
configurations, and ``compile_job`` lowers it to a cubin for e.g. sm_90 with triton's
bundled ptxas. CI machines without a GPU catch compiler errors this way, and
``benchmarks/static_sm90.py`` reads the machine code. Must run in a process where
TRITON_INTERPRET is not 1.

    python -c "from agentfast.attention.backends.triton_fused import load_kernels; \\
               load_kernels(); from agentfast.kernels.compile_check import main; main()"
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from agentfast.kernels import flash_attention as fa

# Mask settings a launch can be recorded with, and (Nq, Nk) shapes.
MASKS = {
    "causal": dict(causal=True),
    "agents": dict(causal=True, agents=4),
    "padding": dict(causal=True, seq_lens=True),
    "agents-noncausal": dict(causal=False, agents=4),
    "padding+agents": dict(causal=False, seq_lens=True, agents=40),
}
SHAPES = {"prefill": (4096, 4096), "decode": (1, 4096)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# ----------------------------------------------------------------------------- specialisation


def specialize(value) -> tuple[str, str | None]:
    """(signature type, attribute) of a runtime argument, as Triton's JIT specialises it."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.runtime.jit import native_specialize_impl

        return native_specialize_impl(CUDABackend, value, False, True, True)
    except (ImportError, TypeError):
        pass  # a triton without that entry point: the same rules by hand
    if value is None:
        return "constexpr", None
    if isinstance(value, bool):
        return "u1", None
    if isinstance(value, int):
        if value == 1:
            return "constexpr", None
        return ("i32" if -2**31 <= value < 2**31 else "i64"), ("D" if value % 16 == 0 else None)
    if isinstance(value, float):
        return "fp32", None
    if isinstance(value, torch.Tensor):
        names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
                 torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1", torch.int16: "i16"}
        return "*" + names[value.dtype], ("D" if value.data_ptr() % 16 == 0 else None)
    raise TypeError(f"cannot specialise a {type(value).__name__}")


def jit_function(kernel):
    """The JITFunction under autotuner / heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


@dataclass
class CompileJob:
    """One kernel compile: where the kernel lives, its specialised signature, options and labels."""

    module: str  # an import name, or a .py path
    kernel: str  # attribute holding the kernel
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int
    num_stages: int
    labels: dict = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.module, self.kernel, self.arch, json.dumps(self.signature, sort_keys=True),
                json.dumps({k: repr(v) for k, v in self.constexprs.items()}, sort_keys=True),
                json.dumps({str(k): v for k, v in self.attrs.items()}, sort_keys=True),
                self.num_warps, self.num_stages)


def job_from_launch(module: str, name: str, kernel, args: tuple, kwargs: dict, config, arch: int,
                    labels: dict | None = None) -> CompileJob:
    """The compile the JIT would do for this launch (with this autotuner config, if any)."""
    jit = jit_function(kernel)
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    bound = dict(zip(jit.arg_names, args))
    bound.update(kwargs)
    if config is not None:
        bound.update(config.kwargs)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(jit.params):
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        kind, attr = specialize(value)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = value
        elif attr and "D" in attr:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return CompileJob(module, name, arch, signature, constexprs, attrs, options.get("num_warps", 4),
                      options.get("num_stages", 3), labels or {})


def compile_job(job: CompileJob, kernel=None):
    """Compile ``job`` (its kernel looked up by the caller or passed in) for its architecture."""
    source = ASTSource(jit_function(kernel), job.signature, job.constexprs, job.attrs)
    return triton.compile(source, target=GPUTarget("cuda", job.arch, 32),
                          options={"num_warps": job.num_warps, "num_stages": job.num_stages})


# ----------------------------------------------------------------------------- recording launches


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records instead of launching."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, dict(kwargs)))


@contextlib.contextmanager
def recording(module):
    """Replace every Triton kernel of ``module`` by a recorder while the block runs."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    saved = {name: obj for name, obj in vars(module).items() if isinstance(obj, (JITFunction, Autotuner))}
    recorders = {name: _Recorder(obj) for name, obj in saved.items()}
    for name, recorder in recorders.items():
        setattr(module, name, recorder)
    try:
        yield recorders
    finally:
        for name, obj in saved.items():
            setattr(module, name, obj)


def kept_configs(kernel, args: tuple, kwargs: dict) -> list:
    """The autotuner's configs its pruner keeps for this launch ([None]: not autotuned)."""
    from triton.runtime.autotuner import Autotuner

    if not isinstance(kernel, Autotuner):
        return [None]
    named = dict(zip(jit_function(kernel).arg_names, args))
    prune = getattr(kernel, "early_config_prune", None)
    return list(prune(kernel.configs, named, **kwargs)) if prune else list(kernel.configs)


def launch_inputs(dtype: str, head_dim: int, mask: str, shape: str, heads: int = 2, kv_heads: int | None = None):
    """CPU tensors standing in for one call (their values are never read)."""
    num_queries, num_keys = SHAPES[shape]
    spec = MASKS[mask]
    kv_heads = heads if kv_heads is None else kv_heads
    q = torch.empty(1, heads, num_queries, head_dim, dtype=DTYPES[dtype])
    k = torch.empty(1, kv_heads, num_keys, head_dim, dtype=DTYPES[dtype])
    v = torch.empty_like(k)
    seq_lens = torch.full((1,), num_keys, dtype=torch.int32) if spec.get("seq_lens") else None
    agent_ids = bitmask = None
    if spec.get("agents"):
        agents = spec["agents"]
        agent_ids = (torch.arange(num_keys, dtype=torch.int32) // 256 % agents)[None].contiguous()
        bitmask = torch.full((1, agents), -1, dtype=torch.int64)
    return q, k, v, seq_lens, agent_ids, bitmask, spec["causal"]


def record_launches(dtype: str, head_dim: int, mask: str, shape: str = "prefill", backward: bool = True,
                    **heads) -> dict:
    """{kernel attribute: (kernel, [(args, kwargs)])} of one forward (and backward) call."""
    q, k, v, seq_lens, agent_ids, bitmask, causal = launch_inputs(dtype, head_dim, mask, shape, **heads)
    with recording(fa) as recorders, torch.no_grad():
        fa.forward(q, k, v, seq_lens, agent_ids, bitmask, causal, head_dim ** -0.5)
        if backward:
            lse = torch.empty(q.shape[:3], dtype=torch.float32)
            fa.backward(torch.empty_like(q), q, k, v, torch.empty_like(q), lse, seq_lens, agent_ids, bitmask,
                        causal, head_dim ** -0.5)
    return {name: (rec.kernel, rec.launches) for name, rec in recorders.items() if rec.launches}


# ----------------------------------------------------------------------------- the check


def compile_all(arch: int = 90, dtypes: tuple[str, ...] = ("fp16",), head_dims: tuple[int, ...] = (40,),
                masks: tuple[str, ...] = tuple(MASKS), verbose: bool = False) -> int:
    """Compile every kernel launch of a forward and backward call, for each dtype, head dim and
    mask setting, in the first configuration the autotuner keeps; returns the count."""
    if fa.INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET=1 was set when the kernels were imported; nothing to compile")
    done: set[tuple] = set()
    for dtype in dtypes:
        for head_dim in head_dims:
            for mask in masks:
                for name, (kernel, launches) in record_launches(dtype, head_dim, mask).items():
                    for args, kwargs in launches:
                        job = job_from_launch(fa.__name__, name, kernel, args, kwargs,
                                              kept_configs(kernel, args, kwargs)[0], arch)
                        if job.key() in done:
                            continue
                        done.add(job.key())
                        compiled = compile_job(job, kernel)
                        if verbose:
                            print(f"{name} {dtype} D={head_dim} {mask}: {compiled.metadata.shared} B shared")
    return len(done)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compile the attention kernels without a GPU.")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--dtypes", default="fp16", help="comma-separated: fp32,fp16,bf16")
    parser.add_argument("--head-dims", default="40", help="comma-separated head dims")
    parser.add_argument("--masks", default=",".join(MASKS), help=f"comma-separated, of {', '.join(MASKS)}")
    args = parser.parse_args(argv)
    count = compile_all(args.arch, tuple(args.dtypes.split(",")), tuple(int(d) for d in args.head_dims.split(",")),
                        tuple(args.masks.split(",")), verbose=True)
    print(f"all kernels compiled ({count})")


if __name__ == "__main__":
    main()
