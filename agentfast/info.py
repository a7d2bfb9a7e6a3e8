"""``python -m agentfast.info`` / ``agentfast info``: build metadata and usable backends.

For every attention backend it prints whether it can serve a typical call on each device
present (a small agent-masked call), and if not, why not.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from ._extension import build_info, has_cuda_kernels, load_error, runtime_info
from ._version import __version__
from .attention import backend_names, get_backend, make_call


def _probe_call(device: str, dtype: torch.dtype):
    """A small agent-masked call, on ``device``, used to ask backends whether they serve it.

    Built on the meta device is not possible for CPU-side checks, so it uses real tiny tensors.
    """
    q = torch.zeros(1, 1, 4, 64, device=device, dtype=dtype)
    ids = torch.zeros(1, 4, dtype=torch.long, device=device)
    visibility = torch.ones(1, 1, dtype=torch.bool, device=device)
    return make_call(q, q, q, causal=True, seq_lens=torch.full((1,), 4, device=device),
                     agent_ids=ids, agent_visibility=visibility)


def backend_table() -> list[tuple[str, str, str]]:
    """Rows (backend, device, status) where status is 'yes' or 'no: <reason>'."""
    devices = [("cpu", torch.float32)]
    if torch.cuda.is_available():
        devices.append(("cuda", torch.bfloat16))
    rows = []
    for name in backend_names():
        for device, dtype in devices:
            reason = get_backend(name).why_not(_probe_call(device, dtype))
            rows.append((name, device, "yes" if reason is None else f"no: {reason}"))
    return rows


def report() -> str:
    built, running = build_info(), runtime_info()
    lines = [
        f"agentfast {__version__}  python {platform.python_version()}  {platform.machine()}",
        f"torch {running['torch_version']}  CUDA runtime {running['torch_cuda_version']}  "
        f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
    ]
    if built:
        cuda = (f"CUDA {built.get('torch_cuda_version')}, archs {built.get('cuda_archs')}, toolkit "
                f"{built.get('cuda_home')}" if built.get("with_cuda") else "no CUDA kernels")
        flags = built.get("cpu_arch_flags")
        cpu = "" if flags is None else f"; CPU kernels {' '.join(flags) or 'without -march'}"
        lines.append(f"extension agentfast._C built with torch {built.get('torch_version')}: {cuda}{cpu}")
    else:
        lines.append("extension agentfast._C: no build recorded")
    error = load_error()
    if error is None:
        lines.append(f"extension loads: yes, CUDA kernels {'present' if has_cuda_kernels() else 'absent'}")
    else:
        lines.append(f"extension loads: no ({error})")
    lines.append("")
    lines.append(f"{'backend':<10} {'device':<6} usable")
    lines.extend(f"{name:<10} {device:<6} {status}" for name, device, status in backend_table())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="agentfast info",
        description="Print the build of agentfast._C (torch, CUDA, archs) and which attention "
                    "backends can serve calls here, with the reason for each that cannot.",
    ).parse_args(argv)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
