"""Agent visibility: which agents' steps each agent may see, in every form the code meets.

The rule (docs/attention-contract.md): a token of agent ``a`` may attend a token of agent
``c`` only if ``a`` sees ``c``. Visibility comes in five forms:

* a **preset** name: ``"full"`` (everyone sees everyone), ``"private"`` (each agent sees only
  itself), ``"hub"`` (the hub sees everyone; every other agent sees the hub and itself);
* a **visibility map** ``{agent: [agents it sees]}`` by name, as episodes carry it in
  ``metadata["visibility"]``: agents not listed see everyone, and every agent sees itself;
* a **visibility matrix**: bool ``[A, A]`` or ``[B, A, A]``, row = the viewing agent,
  column = the seen one;
* an **agent bitmask**: int64 ``[B, A]``, bit ``c`` of row ``a`` set iff ``a`` sees ``c``
  (what the fused kernels read; ``A <= 64`` so that a row fits one word);
* a policy's **visibility setting**: a preset, or ``"data"`` (each episode's own map).

The public arguments that carry a visibility keep their names: ``agent_mask`` (models and
the pipeline: ``model(..., agent_mask=batch["agent_mask"])``) and ``agent_visibility``
(the attention contract). Everything else here says "visibility".

Importing this module does not import torch (the command line reads the preset names while
it builds its parsers); the functions that make tensors import it when first called.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import torch
    from torch import Tensor

MAX_AGENTS = 64
PRESETS = ("full", "private", "hub")
FROM_DATA = "data"
SETTINGS = (FROM_DATA, *PRESETS)
METADATA_KEY = "visibility"  # episodes' metadata: {agent: [agents it sees]}


def check_num_agents(num_agents: int, name: str = "num_agents") -> None:
    """``num_agents`` must lie in ``[1, MAX_AGENTS]``."""
    if not 1 <= num_agents <= MAX_AGENTS:
        raise ValueError(f"{name} must lie in [1, {MAX_AGENTS}], got {num_agents}")


def visibility_preset(
    name: str | Sequence[Sequence[bool | int]] | Tensor,
    num_agents: int,
    *,
    hub: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """A bool visibility matrix ``[A, A]`` (row = the viewing agent, column = the seen one).

    Args:
        name: ``"full"``, ``"private"`` or ``"hub"`` (see the module docstring), or an
            explicit matrix as a list of lists / tensor of bools or 0/1 integers.
        num_agents: A, at most 64.
        hub: the hub agent of ``"hub"``.
        device: where to put the matrix.

    Note: in a causal model an agent under ``"private"`` sees nothing of the others.
    """
    import torch

    check_num_agents(num_agents)
    if not isinstance(name, str):
        matrix = _bool_matrix(torch.as_tensor(name, device=device), strict_integers=True)
        if tuple(matrix.shape) != (num_agents, num_agents):
            raise ValueError(f"visibility matrix must be [{num_agents}, {num_agents}], got {list(matrix.shape)}")
        return matrix
    eye = torch.eye(num_agents, dtype=torch.bool, device=device)
    if name == "full":
        return torch.ones(num_agents, num_agents, dtype=torch.bool, device=device)
    if name == "private":
        return eye
    if name == "hub":
        if not 0 <= hub < num_agents:
            raise ValueError(f"hub must lie in [0, {num_agents}), got {hub}")
        matrix = eye.clone()
        matrix[hub, :] = True  # the hub sees everyone
        matrix[:, hub] = True  # everyone sees the hub
        return matrix
    raise ValueError(f"unknown visibility preset {name!r}; choose one of {', '.join(PRESETS)} or pass a matrix")


def visibility_from_map(
    mapping: Any,
    agent_names: Sequence[str],
    num_agents: int,
    *,
    strict: bool = False,
    name: str = "agent_mask",
) -> Tensor:
    """The bool ``[A, A]`` matrix of a visibility map ``{agent: [agents it sees]}``.

    Agents are named as in ``agent_names`` (row/column ``i`` is ``agent_names[i]``); agents
    the map does not list see everyone, and every agent sees itself. ``strict=False`` (logs)
    passes over what it cannot place: a map that is not a mapping, unknown agents, a value
    that is not a list. ``strict=True`` (a caller's argument) refuses them, naming ``name``.
    """
    import torch

    names = [str(a) for a in agent_names]
    matrix = torch.ones(num_agents, num_agents, dtype=torch.bool)
    if not isinstance(mapping, Mapping):
        if strict:
            raise ValueError(f"{name} must map agents to the lists of agents they see, got {mapping!r}")
        return matrix
    if strict:
        _check_map(mapping, names, name)
    row_of = {label: i for i, label in enumerate(names) if i < num_agents}
    for viewer, seen in mapping.items():
        if str(viewer) not in row_of or not isinstance(seen, (list, tuple)):
            continue
        row = row_of[str(viewer)]
        matrix[row] = False
        for other in seen:
            if str(other) in row_of:
                matrix[row, row_of[str(other)]] = True
        matrix[row, row] = True
    return matrix


def _check_map(mapping: Mapping[Any, Any], names: Sequence[str], name: str) -> None:
    for viewer, seen in mapping.items():
        if not isinstance(seen, (list, tuple)):
            raise ValueError(f"{name}[{viewer!r}] must be a list of agents, got {seen!r}")
        unknown = [str(a) for a in (viewer, *seen) if str(a) not in names]
        if unknown:
            raise ValueError(f"unknown agent {unknown[0]!r} in {name}; known: {list(names)}")


def as_visibility(
    value: Any,
    num_agents: int,
    *,
    agent_names: Sequence[str] | None = None,
    batch: int | None = None,
    device: torch.device | str | None = None,
    name: str = "agent_mask",
) -> Tensor | None:
    """Any form a caller may pass (preset, map, matrix, list of lists; None) as a checked
    bool matrix ``[A, A]`` or ``[B, A, A]`` on ``device`` (None stays None).

    A preset or a map gives ``[num_agents, num_agents]``; a map names agents as
    ``agent_names`` (default ``"0"``, ``"1"``, ...). An explicit matrix keeps its own size,
    which must be 1 to 64 agents, and with ``batch`` its leading size must be ``batch``.
    """
    import torch

    if value is None:
        return None
    if isinstance(value, str):
        matrix = visibility_preset(value, num_agents, device=device)
    elif isinstance(value, Mapping):
        names = agent_names if agent_names else [str(i) for i in range(num_agents)]
        matrix = visibility_from_map(value, names, num_agents, strict=True, name=name)
    elif isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            raise TypeError(f"{name} must be bool (True = may see), got {value.dtype}")
        matrix = _bool_matrix(value, strict_integers=False)
    else:
        matrix = visibility_preset(value, len(value), device=device)
    matrix = matrix.to(device) if device is not None else matrix
    check_visibility_shape(matrix, batch, name=name)
    return matrix


def check_visibility_shape(matrix: Tensor, batch: int | None, *, name: str = "agent_mask",
                           error: type[Exception] = ValueError) -> None:
    """``matrix`` must be ``[A, A]`` or ``[B, A, A]`` (``B = batch`` when given), 1 <= A <= 64."""
    shape = list(matrix.shape)
    square = matrix.dim() in (2, 3) and shape[-1] == shape[-2]
    if not square or (matrix.dim() == 3 and batch is not None and shape[0] != batch):
        wanted = "B" if batch is None else f"B={batch}"
        raise error(f"{name} must be [A, A] or [{wanted}, A, A], got {shape}")
    if shape[-1] > MAX_AGENTS:
        raise error(f"at most {MAX_AGENTS} agents are supported, {name} has {shape[-1]}")
    if shape[-1] == 0:
        raise error(f"{name} has zero agents")


def setting_visibility(setting: str, num_agents: int,
                       device: torch.device | str = "cpu") -> Tensor | None:
    """The fixed matrix of a policy's visibility setting, or None where there is none:
    ``"full"`` needs no mask at all, and ``"data"`` means each batch's own (from the
    episodes' maps)."""
    if setting not in SETTINGS:
        raise ValueError(f"visibility must be one of {SETTINGS}, got {setting!r}")
    if setting in ("full", FROM_DATA):
        return None
    return visibility_preset(setting, num_agents, device=device)


def parse_visibility_argument(text: str | None) -> str | dict[str, Any] | None:
    """A command-line visibility: a preset name, or JSON ``{agent: [agents it sees]}``."""
    if text is None or text in PRESETS:
        return text
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--visibility must be {', '.join(PRESETS)} or JSON like "
                         f"'{{\"coder\": [\"planner\"]}}', got {text!r} ({error.msg})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"--visibility JSON must be an object {{agent: [agents it sees]}}, got {text!r}")
    return mapping


def visibility_to_bitmask(visibility: Tensor) -> Tensor:
    """Pack a bool visibility ``[B, A, A]`` into int64 ``[B, A]``; bit c of row a = a sees c.

    Bit 63 lands in the sign bit; kernels read the mask as unsigned bits, so that is fine.
    """
    import torch

    num_agents = visibility.shape[-1]
    bits = torch.ones((), dtype=torch.int64, device=visibility.device) << torch.arange(
        num_agents, device=visibility.device, dtype=torch.int64
    )
    return (visibility.to(torch.int64) * bits).sum(dim=-1)


def visibility_between(visibility: Tensor, query_agents: Tensor, key_agents: Tensor) -> Tensor:
    """Bool ``[B, Nq, Nk]``: whether the agent of each query sees the agent of each key.

    ``visibility`` is ``[B, A, A]``; ``query_agents`` ``[B, Nq]`` and ``key_agents``
    ``[B, Nk]`` hold agent ids (the same tokens when queries are keys too).
    """
    import torch

    rows = torch.gather(visibility, 1, query_agents.long()[:, :, None].expand(-1, -1, visibility.shape[-1]))
    return torch.gather(rows, 2, key_agents.long()[:, None, :].expand(-1, query_agents.shape[1], -1))


def bitmask_to_visibility(bitmask: Tensor, num_agents: int) -> Tensor:
    """Inverse of ``visibility_to_bitmask``: int64 ``[B, A]`` to bool ``[B, A, A]``."""
    import torch

    shifts = torch.arange(num_agents, device=bitmask.device, dtype=torch.int64)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).bool()


def _bool_matrix(matrix: Tensor, *, strict_integers: bool) -> Tensor:
    """A bool matrix from bools or integers (nonzero = may see); ``strict_integers`` allows
    only 0 and 1."""
    import torch

    if matrix.dtype == torch.bool:
        return matrix
    if matrix.is_floating_point() or matrix.is_complex():
        raise TypeError(f"a visibility matrix must be bool or 0/1 integers, got {matrix.dtype}")
    if strict_integers and bool(((matrix != 0) & (matrix != 1)).any()):
        raise ValueError("a visibility matrix of integers must hold only 0 and 1")
    return matrix != 0
