"""Draw the 128 x 128 extension icon, Resources/Icons/SAINRSlicer.png.

Three thick slices turn into many thin ones (what SA-INR does to the slice spacing). Drawn with
matplotlib only, so the icon has no external image source: ``python scripts/draw_icon.py``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend
from matplotlib.patches import FancyArrowPatch, Polygon  # noqa: E402

ICON = Path(__file__).resolve().parents[1] / "Resources" / "Icons" / "SAINRSlicer.png"
SIZE = 128


def slab(ax, x: float, color) -> None:
    """One slice seen obliquely: a parallelogram 62 px high, 12 px deep, left edge at x."""
    y, height, depth = 30, 62, 12
    corners = [
        (x, y),
        (x + depth, y + depth * 0.55),
        (x + depth, y + height + depth * 0.55),
        (x, y + height),
    ]
    ax.add_patch(Polygon(corners, facecolor=color, edgecolor="#1b2a3a", linewidth=0.6))


def main() -> None:
    fig = plt.figure(figsize=(SIZE / 100, SIZE / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, SIZE)
    ax.set_ylim(0, SIZE)
    ax.axis("off")
    for i, color in enumerate(("#3d5a80", "#4a6fa5", "#5b84c4")):
        slab(ax, 8 + 15 * i, color)
    arrow = FancyArrowPatch(
        (56, 64), (72, 64), arrowstyle="-|>", mutation_scale=14, color="#ee6c4d", linewidth=2.5
    )
    ax.add_patch(arrow)
    thin = plt.get_cmap("YlOrBr")
    for i in range(9):
        slab(ax, 76 + 4.6 * i, thin(0.35 + 0.06 * i))
    fig.savefig(ICON, dpi=100, transparent=True)
    plt.close(fig)


if __name__ == "__main__":
    main()
