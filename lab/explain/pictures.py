"""The explanations as pictures: matplotlib (Agg, no display) PNGs, and the same images in TensorBoard.

    from lab.explain import pictures
    fig = pictures.attributions_figure("image", x, {"integrated_gradients": maps}, title="predicted 7 (0.98)")
    png, rgb = pictures.render(fig)           # PNG bytes (a file, the dashboard) and an RGB array (TensorBoard)
    pictures.log_images(run, {"explain/test-0/attributions": rgb})

Attributions use one diverging colour map everywhere: red pushes the explained output up, blue
pushes it down, white is no effect; each map is scaled to its own largest absolute value (the
methods' units differ), symmetric around 0 so white always means 0.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

DIVERGING = "RdBu_r"
"""Red = for the explained output, blue = against it."""
WRAP = 32
"""Tokens per line in a token heatmap."""


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _title(fig: Any, text: str, fontsize: int = 9) -> None:
    """A title wrapped to the figure's width (a run name and a label are long for a narrow figure)."""
    import textwrap

    width = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))  # characters per line: ~0.6 em each
    fig.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=fontsize)


def render(fig: Any) -> tuple[bytes, np.ndarray]:
    """The figure as PNG bytes and as an RGB array ``[H, W, 3]`` (uint8)."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue(), rgb


def shown(token: str) -> str:
    """A token as it can be drawn: spaces as a middle dot, line breaks and tabs as arrows."""
    return token.replace(" ", "\u00b7").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def _limit(values: Any) -> float:
    top = float(np.abs(np.asarray(values)).max()) if np.size(values) else 0.0
    return top if top > 0 else 1.0


TITLES = {"integrated_gradients": "Integrated Gradients", "saliency": "Saliency", "occlusion": "Occlusion"}


def attributions_figure(inputs: str, x: Any, maps: dict[str, Any], title: str = "",
                        tokens: Sequence[str] | None = None) -> Any:
    """One panel per method: heatmaps over the image (beside it), bars over the features, or coloured tokens.

    ``x``: the one input (image ``[C, H, W]``, features ``[F]``); ``maps``: method -> map of the same
    shape (``[T]`` per token for texts, with ``tokens`` their strings).
    """
    names = list(maps)
    if inputs == "image":
        fig = _figure(max(5.0, 2.4 * (len(names) + 1)), 3.1)
        image = np.asarray(x).sum(0)
        ax = fig.add_subplot(1, len(names) + 1, 1)
        ax.imshow(image, cmap="gray_r")
        ax.set_title("input", fontsize=9)
        ax.axis("off")
        for i, name in enumerate(names):
            m = np.asarray(maps[name]).sum(0)
            ax = fig.add_subplot(1, len(names) + 1, i + 2)
            lim = _limit(m)
            shade = ax.imshow(m, cmap=DIVERGING, vmin=-lim, vmax=lim)
            ax.contour(image, levels=[float(image.min() + 0.5 * (image.max() - image.min()))], colors="k",
                       linewidths=0.5)
            ax.set_title(TITLES.get(name, name), fontsize=9)
            ax.axis("off")
            fig.colorbar(shade, ax=ax, fraction=0.046, pad=0.04)
    elif inputs == "features":
        n = len(np.asarray(x))
        fig = _figure(2.8 * len(names), 0.9 + 0.22 * n)
        for i, name in enumerate(names):
            m = np.asarray(maps[name])
            ax = fig.add_subplot(1, len(names), i + 1)
            lim = _limit(m)
            ax.barh(range(n), m, color=[_colour(v, lim) for v in m])
            ax.set_yticks(range(n), [f"x{j} = {float(v):+.2f}" for j, v in enumerate(np.asarray(x))], fontsize=7)
            ax.invert_yaxis()
            ax.axvline(0, color="0.5", lw=0.5)
            ax.set_title(TITLES.get(name, name), fontsize=9)
    else:
        tokens = list(tokens or [])
        lines = max(1, -(-len(tokens) // WRAP))
        width = max(len(shown(t)) for t in tokens) if tokens else 1
        fig = _figure(max(6.0, 0.16 * min(len(tokens), WRAP) * max(1, width)), 0.8 + len(names) * (0.35 + 0.28 * lines))
        for i, name in enumerate(names):
            ax = fig.add_subplot(len(names), 1, i + 1)
            _token_row(ax, tokens, np.asarray(maps[name]), width)
            ax.set_title(TITLES.get(name, name), fontsize=9, loc="left")
    if title:
        _title(fig, title)
    fig.tight_layout()
    return fig


def _colour(value: float, limit: float) -> Any:
    from matplotlib import colormaps

    return colormaps[DIVERGING](0.5 + 0.5 * float(value) / limit)


def _token_row(ax: Any, tokens: list[str], values: np.ndarray, width: int) -> None:
    """Tokens in reading order, wrapped every ``WRAP``, each on a patch coloured by its value."""
    lim = _limit(values)
    lines = max(1, -(-len(tokens) // WRAP))
    for k, (tok, v) in enumerate(zip(tokens, values)):
        col, row = k % WRAP, k // WRAP
        ax.text(col * width + width / 2, lines - row - 0.5, shown(tok), ha="center", va="center",
                family="monospace", fontsize=8,
                bbox={"boxstyle": "square,pad=0.15", "facecolor": _colour(v, lim), "edgecolor": "none"})
    ax.set_xlim(0, WRAP * width)
    ax.set_ylim(0, lines)
    ax.axis("off")


def attention_figure(weights: Any, tokens: Sequence[str], title: str = "") -> Any:
    """A grid of attention maps, one per layer (rows) and head (columns); row = query, column = key."""
    w = np.asarray(weights)
    layers, heads, T = w.shape[0], w.shape[1], w.shape[-1]
    size = 2.2 if T <= 16 else 2.6
    fig = _figure(0.6 + size * heads, 0.6 + size * layers)
    labels = [shown(t) for t in tokens]
    for l in range(layers):
        for h in range(heads):
            ax = fig.add_subplot(layers, heads, l * heads + h + 1)
            ax.imshow(w[l, h], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {l + 1}, head {h + 1}", fontsize=7)
            if T <= 24:
                ax.set_xticks(range(T), labels, fontsize=5, family="monospace")
                ax.set_yticks(range(T), labels, fontsize=5, family="monospace")
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    _title(fig, title or "attention weights (row: the position that looks; column: where it looks)")
    fig.tight_layout()
    return fig


def lens_figure(lens: dict[str, Any], title: str = "") -> Any:
    """The logit lens as a table: layers (rows) by positions (columns), each cell the top next token,
    shaded by its probability; the column headers are the input tokens at those positions."""
    grid, layers, tokens = lens["grid"], lens["layers"], lens["tokens"]
    fig = _figure(1.6 + 0.55 * len(tokens), 0.9 + 0.32 * len(layers))
    ax = fig.add_subplot()
    probs = np.array([[p for _, p in row] for row in grid])
    ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(grid):
        for j, (tok, p) in enumerate(row):
            ax.text(j, i, shown(tok), ha="center", va="center", fontsize=8, family="monospace",
                    color="white" if p > 0.6 else "black")
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ax.set_xticks(range(len(tokens)), [shown(t) for t in tokens], fontsize=8, family="monospace")
    ax.xaxis.tick_top()
    ax.set_xlabel("input token at each position (the cell: the next token this layer predicts there)", fontsize=8)
    ax.set_title(title or "logit lens", fontsize=9, pad=20)
    fig.tight_layout()
    return fig


def deletion_figure(checks: dict[str, Any], title: str = "") -> Any:
    """Deletion curves: confidence as the most-attributed inputs go first (solid), in random orders (dashed),
    and least-attributed first (dotted)."""
    curves = checks["deletion"]
    fig = _figure(3.2 * max(1, len(curves)), 3.0)
    for i, (name, d) in enumerate(curves.items()):
        ax = fig.add_subplot(1, max(1, len(curves)), i + 1)
        if "curve_attributed" not in d:  # too few samples to draw
            continue
        ax.plot(d["fractions"], d["curve_attributed"], label=f"most attributed first ({d['auc_attributed']:.3f})")
        ax.plot(d["fractions"], d["curve_random"], "--", label=f"random order ({d['auc_random']:.3f})")
        ax.plot(d["fractions"], d["curve_reversed"], ":", label=f"least attributed first ({d['auc_reversed']:.3f})")
        ax.set_xlabel("share of the inputs removed", fontsize=8)
        ax.set_ylabel("confidence in the explained output", fontsize=8)
        verdict = "PASS" if d["passed"] else "FAIL"
        ax.set_title(f"{TITLES.get(name, name)}: {verdict}", fontsize=9)
        ax.legend(fontsize=7, title="area under the curve", title_fontsize=7)
        ax.grid(alpha=0.3)
    _title(fig, title or "deletion curves")
    fig.tight_layout()
    return fig


def comparison_figure(inputs: str, x: Any, left: Any, right: Any, names: tuple[str, str], rho: float,
                      tokens: Sequence[str] | None = None) -> Any:
    """The same method's map for two models side by side, with their rank correlation."""
    title = f"Occlusion, {names[0]} vs {names[1]}: rank correlation {rho:.3f}"
    if inputs == "tokens":
        return attributions_figure("tokens", x, {names[0]: left, names[1]: right}, title=title, tokens=tokens)
    return attributions_figure(inputs, x, {names[0]: left, names[1]: right}, title=title)


def log_images(run: Any, images: dict[str, np.ndarray], step: int = 0) -> None:
    """The images in the run's own TensorBoard folder (IMAGES tab), under their tags."""
    from torch.utils.tensorboard import SummaryWriter

    from lab.fileio import quiet_tensorboard_writer_errors

    quiet_tensorboard_writer_errors()  # a full disk: one line from the caller, not the writer thread's traceback
    writer = SummaryWriter(log_dir=str(run.path), filename_suffix=".explain")
    try:
        for tag, rgb in images.items():
            writer.add_image(tag, rgb, step, dataformats="HWC")
    finally:
        writer.close()


__all__ = ["attention_figure", "attributions_figure", "comparison_figure", "deletion_figure", "lens_figure",
           "log_images", "render", "shown"]
