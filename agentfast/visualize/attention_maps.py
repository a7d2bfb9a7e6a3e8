"""Attention maps of one episode: which earlier tokens each token of a policy attends to.

A policy's token stream interleaves one group of tokens per step (s_t, a_t; or s_t, o_t,
a_t for hierarchical policies). ``AttentionMaps`` holds the weights that every layer and
head gave, for one forward over one episode, with each token's step, kind and agent, and
the mask rule of that forward (which keys a query could attend at all). The weights come
from ``TransformerBackbone.capture_attention``, that is from the reference backend: fused
kernels never materialise them.

Drawings: ``draw_layer`` (one layer, mean over heads or every head, over the token stream,
with step ticks and strips for token kind and agent along both axes) and
``draw_agent_summary`` (how much attention each agent gives each agent, with the visibility
matrix beside it for multi-agent policies). Each PNG has its numbers in a JSON file beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .figures import new_figure, save_figure, thinned_ticks, wrapped_title

WEIGHTS_NOTE = ("attention weights computed with the reference backend for this one forward "
                "(fused kernels do not return weights); the policy's own backend gives the "
                "same outputs without materialising them")
# Token kinds in greys (a regular pattern along the stream), agents in colours, so the two
# strips never share a colour; a policy has either state or state+return tokens.
KIND_COLOURS = {"state": "#262626", "state+return": "#262626", "option": "#8c8c8c",
                "action": "#cfcfcf"}
AGENT_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02",
                 "#a6761d", "#1f78b4")
NOT_ALLOWED_COLOUR = "#ffffff"
WEIGHT_COLOUR_MAP = "viridis"
WEIGHT_GAMMA = 0.5  # square-root colour scale: small weights stay visible next to a 1.0


@dataclass(frozen=True)
class Token:
    """One position of the token stream: the episode step it belongs to, its kind
    (state, state+return, option or action) and the agent acting at that step."""

    step: int
    kind: str
    agent: str


def token_stream(kinds: Sequence[str], steps: Sequence[int], agents: Sequence[str]) -> list[Token]:
    """The tokens of ``steps`` (episode step numbers) when each step contributes one token
    of each of ``kinds``, in order; ``agents[i]`` acts at ``steps[i]``."""
    if len(steps) != len(agents):
        raise ValueError(f"one agent per step: {len(steps)} steps but {len(agents)} agents")
    unknown = [kind for kind in kinds if kind not in KIND_COLOURS]
    if unknown:
        raise ValueError(f"unknown token kinds {unknown}; known: {', '.join(KIND_COLOURS)}")
    return [Token(int(step), kind, str(agent)) for step, agent in zip(steps, agents) for kind in kinds]


@dataclass
class AttentionMaps:
    """The attention weights of one forward over one episode.

    weights: float ``[L, H, N, N]`` (layer, head, query token, key token); rows sum to 1
    over the keys the query may attend, and are exactly 0 elsewhere. allowed: bool
    ``[N, N]``, the mask rule of the forward (causal order, agent visibility). tokens: the
    N tokens. agents: the agents of the episode, in id order. visibility: bool ``[A, A]``
    over ``agents`` (row = the attending agent) for multi-agent policies, else None.
    """

    weights: np.ndarray
    allowed: np.ndarray
    tokens: list[Token]
    agents: list[str]
    visibility: np.ndarray | None = None
    title: str = ""
    note: str = WEIGHTS_NOTE
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float32)
        self.allowed = np.asarray(self.allowed, dtype=bool)
        if self.weights.ndim != 4 or self.weights.shape[2] != self.weights.shape[3]:
            raise ValueError(f"weights must be [layers, heads, N, N], got {list(self.weights.shape)}")
        num_tokens = self.weights.shape[-1]
        if self.allowed.shape != (num_tokens, num_tokens):
            raise ValueError(f"allowed must be [{num_tokens}, {num_tokens}], got {list(self.allowed.shape)}")
        if len(self.tokens) != num_tokens:
            raise ValueError(f"{len(self.tokens)} tokens described for {num_tokens} attended")
        missing = sorted({t.agent for t in self.tokens} - set(self.agents))
        if missing:
            raise ValueError(f"tokens name agents {missing} that are not among {self.agents}")
        if self.visibility is not None:
            self.visibility = np.asarray(self.visibility, dtype=bool)
            size = len(self.agents)
            if self.visibility.shape != (size, size):
                raise ValueError(f"visibility must be [{size}, {size}] over the agents {self.agents}, "
                                 f"got {list(self.visibility.shape)}")

    @classmethod
    def from_capture(cls, captured: Sequence[Any], **fields: Any) -> "AttentionMaps":
        """From ``capture_attention``'s list (one ``[1, H, N, N]`` tensor per layer, one
        forward over a batch of one episode); ``fields`` as the constructor's."""
        if not captured:
            raise ValueError("nothing was captured: run exactly one forward inside capture_attention()")
        shapes = {tuple(w.shape) for w in captured}
        if len(shapes) != 1 or next(iter(shapes))[0] != 1:
            raise ValueError(f"expected one forward over a batch of one episode (one [1, H, N, N] "
                             f"tensor per layer); got shapes {sorted(shapes)}")
        weights = np.stack([w[0].detach().float().cpu().numpy() for w in captured])
        return cls(weights=weights, **fields)

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[1])

    def layer_mean(self, layer: int) -> np.ndarray:
        """``[N, N]``: the weights of ``layer`` averaged over its heads."""
        self._check_layer(layer)
        return self.weights[layer].mean(axis=0)

    def agent_summary(self, layer: int | None = None) -> np.ndarray:
        """``[A, A]``: entry (a, c) is the share of attention that a token of agent a gives
        the tokens of agent c, averaged over a's tokens and the heads (and the layers when
        ``layer`` is None). Rows sum to 1 (less where a token may attend nothing); a pair
        that the visibility hides is exactly 0."""
        if layer is None:
            per_head = self.weights.mean(axis=(0, 1))
        else:
            self._check_layer(layer)
            per_head = self.weights[layer].mean(axis=0)
        index = {agent: i for i, agent in enumerate(self.agents)}
        token_agent = np.array([index[t.agent] for t in self.tokens])
        one_hot = np.eye(len(self.agents), dtype=np.float64)[token_agent]  # [N, A]
        mass = per_head.astype(np.float64) @ one_hot  # [N, A]: what each query gives each agent
        counts = one_hot.sum(axis=0)
        summary = (one_hot.T @ mass) / np.maximum(counts, 1)[:, None]
        return summary.astype(np.float32)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} does not exist; the policy has layers 0..{self.num_layers - 1}")

    def token_dicts(self) -> list[dict[str, Any]]:
        return [{"index": i, "step": t.step, "kind": t.kind, "agent": t.agent}
                for i, t in enumerate(self.tokens)]


# ----------------------------------------------------------------------------- drawing


def draw_layer(maps: AttentionMaps, layer: int, path: str | os.PathLike[str], *,
               heads: bool = False) -> Any:
    """Draw ``layer`` to ``path`` (PNG; JSON beside): the mean over heads, or with
    ``heads`` one panel per head. Returns the matplotlib Figure."""
    maps._check_layer(layer)
    panels = ([(f"head {h}", maps.weights[layer, h]) for h in range(maps.num_heads)] if heads
              else [("", maps.layer_mean(layer))])
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    size = float(np.clip(0.09 * len(maps.tokens) + 3.0, 5.0, 9.0))
    figure = new_figure(max(size * columns + 1.2, 8.0), size * rows + 2.0)
    grid = figure.add_gridspec(rows + 1, columns + 1, height_ratios=[*([1.0] * rows), 0.08],
                               width_ratios=[*([1.0] * columns), 0.04])
    image = None
    for index, (name, matrix) in enumerate(panels):
        cell = grid[index // columns, index % columns]
        image = _heatmap_with_strips(figure, cell, matrix, maps, name, show_legend_labels=index == 0)
    figure.colorbar(image, cax=figure.add_subplot(grid[:rows, columns]),
                    label="attention weight (square-root colour scale)")
    _legend_row(figure, grid[rows, :], maps)
    what = "each head" if heads else f"mean over {maps.num_heads} heads"
    wrapped_title(figure, f"{maps.title}\nlayer {layer} ({layer + 1} of {maps.num_layers}), {what}\n"
                  "attention of each token (row) to earlier tokens (column)", fontsize=10)
    data = {"title": maps.title, "note": maps.note, "layer": layer, "num_layers": maps.num_layers,
            "tokens": maps.token_dicts(), "allowed": maps.allowed.tolist(),
            "mean_over_heads": _rounded(maps.layer_mean(layer))}
    if heads:
        data["heads"] = [_rounded(maps.weights[layer, h]) for h in range(maps.num_heads)]
    save_figure(figure, path, {**data, **maps.metadata})
    return figure


def _heatmap_with_strips(figure: Any, cell: Any, matrix: np.ndarray, maps: AttentionMaps,
                         name: str, show_legend_labels: bool) -> Any:
    """One N x N heatmap with strips of token kind and agent above it (keys) and to its
    right (queries), step numbers as ticks; cells the mask forbids in grey."""
    from matplotlib.colors import ListedColormap, PowerNorm

    show_agents = len(maps.agents) > 1
    strips = 2 if show_agents else 1
    inner = cell.subgridspec(1 + strips, 1 + strips, hspace=0.02, wspace=0.02,
                             height_ratios=[*([0.035] * strips), 1.0],
                             width_ratios=[1.0, *([0.035] * strips)])
    heat = figure.add_subplot(inner[strips, 0])
    colour_map = _weights_colour_map()
    shown = np.ma.masked_array(matrix, mask=~maps.allowed)
    image = heat.imshow(shown, cmap=colour_map, norm=PowerNorm(WEIGHT_GAMMA, vmin=0.0, vmax=1.0),
                        interpolation="nearest", aspect="auto")
    _step_ticks(heat, maps.tokens)
    heat.set_xlabel("key token (attended to), by step")
    heat.set_ylabel("query token (attending), by step")
    kinds = list(KIND_COLOURS)
    kind_ids = np.array([kinds.index(t.kind) for t in maps.tokens])
    kind_map = ListedColormap(list(KIND_COLOURS.values()))
    strip_rows = [("kind", kind_ids, kind_map, len(kinds))]
    if show_agents:
        agent_ids = np.array([maps.agents.index(t.agent) for t in maps.tokens])
        strip_rows.append(("agent", agent_ids, ListedColormap(_agent_colours(len(maps.agents))),
                           len(maps.agents)))
    for position, (label, ids, cmap, count) in enumerate(strip_rows):
        top = figure.add_subplot(inner[position, 0], sharex=heat)
        top.imshow(ids[None, :], cmap=cmap, vmin=-0.5, vmax=count - 0.5, aspect="auto",
                   interpolation="nearest")
        side = figure.add_subplot(inner[strips, strips - position], sharey=heat)
        side.imshow(ids[:, None], cmap=cmap, vmin=-0.5, vmax=count - 0.5, aspect="auto",
                    interpolation="nearest")
        for axes in (top, side):
            axes.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)
        top.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        side.set_xlabel(label, rotation=90, ha="center", va="top", fontsize=8)
        if position == 0 and name:
            top.set_title(name, fontsize=10)
    return image


def _weights_colour_map() -> Any:
    from matplotlib import colormaps

    return colormaps[WEIGHT_COLOUR_MAP].with_extremes(bad=NOT_ALLOWED_COLOUR)


def _step_ticks(axes: Any, tokens: Sequence[Token]) -> None:
    """Ticks at the first token of each step, thinned so labels never overlap."""
    firsts = [i for i, t in enumerate(tokens) if i == 0 or tokens[i - 1].step != t.step]
    shown = [firsts[i] for i in thinned_ticks(len(firsts), most=16)]
    labels = [str(tokens[i].step) for i in shown]
    axes.set_xticks(shown, labels)
    axes.set_yticks(shown, labels)
    axes.tick_params(labelsize=8)


def _agent_colours(count: int) -> list[str]:
    return [AGENT_COLOURS[i % len(AGENT_COLOURS)] for i in range(count)]


def _legend_row(figure: Any, cell: Any, maps: AttentionMaps) -> None:
    """A row under the maps naming the colours of the kind and agent strips."""
    from matplotlib.patches import Patch

    axes = figure.add_subplot(cell)
    axes.axis("off")
    present = [kind for kind in KIND_COLOURS if any(t.kind == kind for t in maps.tokens)]
    handles = [Patch(color=KIND_COLOURS[kind], label=kind) for kind in present]
    if len(maps.agents) > 1:
        handles += [Patch(color=colour, label=f"agent {agent}")
                    for agent, colour in zip(maps.agents, _agent_colours(len(maps.agents)))]
    handles.append(Patch(facecolor=NOT_ALLOWED_COLOUR, edgecolor="#999999",
                         label="blank: not allowed (causal order or visibility)"))
    axes.legend(handles=handles, loc="center", ncol=min(len(handles), 3), frameon=False,
                fontsize=9, title="strips: token kind" + (" and agent" if len(maps.agents) > 1 else ""),
                title_fontsize=9)


def draw_agent_summary(maps: AttentionMaps, path: str | os.PathLike[str]) -> Any:
    """Draw how much attention each agent gives each agent (mean over layers, heads and
    the agent's tokens) to ``path``, with the visibility matrix beside it when the policy
    has one; pairs the visibility hides are hatched (their share is exactly 0)."""
    from matplotlib.colors import ListedColormap

    summary = maps.agent_summary()
    count = len(maps.agents)
    panels = 2 if maps.visibility is not None else 1
    side = float(np.clip(0.55 * count + 2.2, 3.6, 8.0))
    figure = new_figure(side * panels + 1.0, side + 1.0)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    image = axes[0].imshow(summary, cmap="Blues", vmin=0.0, vmax=1.0)
    hidden = ~maps.visibility if maps.visibility is not None else np.zeros_like(summary, dtype=bool)
    for (row, column), value in np.ndenumerate(summary):
        text = ("0" if value == 0 else f"{value:.2f}") + ("\nhidden" if hidden[row, column] else "")
        axes[0].text(column, row, text, ha="center", va="center", fontsize=9, zorder=3,
                     color="white" if value > 0.6 else "black")
    for row, column in zip(*np.nonzero(hidden)):
        axes[0].add_patch(_hatched_cell(row, column))
    if maps.visibility is not None:
        axes[1].imshow(maps.visibility.astype(int), cmap=ListedColormap(["#f4cccc", "#b6d7a8"]),
                       vmin=0, vmax=1)
        for (row, column), sees in np.ndenumerate(maps.visibility):
            axes[1].text(column, row, "sees" if sees else "hidden", ha="center", va="center", fontsize=9)
        axes[1].set_title("visibility matrix of the forward\n(row sees column?)", fontsize=10)
    axes[0].set_title("share of attention each agent (row)\ngives each agent's tokens (column)",
                      fontsize=10)
    for ax in axes:
        ax.set_xticks(range(count), maps.agents, rotation=30 if count > 3 else 0, ha="right" if count > 3 else "center")
        ax.set_yticks(range(count), maps.agents)
        ax.set_xlabel("attended agent")
        ax.set_ylabel("attending agent")
    figure.colorbar(image, ax=axes[0], label="share of attention", shrink=0.8)
    wrapped_title(figure, f"{maps.title}\nmean over {maps.num_layers} layers, {maps.num_heads} heads and "
                  "each agent's tokens" + ("; hatched pairs are hidden by the visibility matrix"
                                           if maps.visibility is not None else ""), fontsize=10)
    data = {"title": maps.title, "note": maps.note, "agents": maps.agents,
            "mean_over_layers": _rounded(summary),
            "per_layer": [_rounded(maps.agent_summary(layer)) for layer in range(maps.num_layers)],
            "visibility": None if maps.visibility is None else maps.visibility.tolist()}
    save_figure(figure, path, {**data, **maps.metadata})
    return figure


def _hatched_cell(row: int, column: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, hatch="//", edgecolor="#e6a19a",
                     linewidth=0, zorder=2)


def _rounded(matrix: np.ndarray) -> list[Any]:
    """A matrix as nested lists of floats with 7 significant digits (float32 precision)."""
    return np.vectorize(lambda x: float(f"{x:.7g}"), otypes=[float])(matrix).tolist()


def write_attention_maps(maps: AttentionMaps, directory: str | os.PathLike[str], *,
                         heads: bool = False) -> list[Path]:
    """Every drawing of ``maps`` into ``directory``: ``attention_layer{L}.png`` per layer
    (mean over heads), ``attention_layer{L}_heads.png`` with ``heads``, and
    ``attention_agents.png`` when the episode has more than one agent; a JSON beside each."""
    directory = Path(directory)
    written = []
    for layer in range(maps.num_layers):
        draw_layer(maps, layer, directory / f"attention_layer{layer}.png")
        written.append(directory / f"attention_layer{layer}.png")
        if heads:
            draw_layer(maps, layer, directory / f"attention_layer{layer}_heads.png", heads=True)
            written.append(directory / f"attention_layer{layer}_heads.png")
    if len(maps.agents) > 1:
        draw_agent_summary(maps, directory / "attention_agents.png")
        written.append(directory / "attention_agents.png")
    return written
