"""Training curves of the retraining rounds: loss and validation Dice per epoch (matplotlib).

Redraws go through ``draw_idle`` (coalesced by the event loop), at most once per epoch event
or when the point under the cursor changes, so a round never causes a redraw storm.
"""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtWidgets import QSizePolicy

BACKGROUND = "#262930"  # napari's dark theme
FOREGROUND = "#d0d0d0"
LOSS_COLOR = "#f0a040"
DICE_COLOR = "#60d060"


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


class CurvePlot(FigureCanvasQTAgg):
    """Training loss (left axis) and validation Dice (right axis, 0-1) per epoch over all
    rounds, a dashed line where a round begins, and the values of the epoch under the cursor."""

    def __init__(self, parent=None) -> None:
        fig = Figure(figsize=(3.2, 2.0), dpi=100, facecolor=BACKGROUND, layout="constrained")
        super().__init__(fig)
        if parent is not None:
            self.setParent(parent)
        self.loss: list[float] = []
        self.dice: list[float | None] = []
        self.round_starts: list[int] = []
        self._hover: int | None = None
        self.setMinimumHeight(170)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss and validation Dice per epoch; point at a curve to read it")

        ax = fig.add_subplot()
        twin = ax.twinx()
        for a in (ax, twin):
            a.set_facecolor(BACKGROUND)
            a.tick_params(colors=FOREGROUND, labelsize=8)
            for spine in a.spines.values():
                spine.set_color("#666666")
        ax.set_xlabel("epoch", color=FOREGROUND, fontsize=8)
        ax.set_ylabel("training loss", color=LOSS_COLOR, fontsize=8)
        twin.set_ylabel("validation Dice", color=DICE_COLOR, fontsize=8)
        twin.set_ylim(0.0, 1.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        (self._loss_line,) = ax.plot([], [], "o-", color=LOSS_COLOR, ms=3, lw=1.5, label="loss")
        (self._dice_line,) = twin.plot([], [], "o-", color=DICE_COLOR, ms=3, lw=1.5, label="Dice")
        legend = ax.legend(
            handles=[self._loss_line, self._dice_line],
            loc="upper center",
            fontsize=8,
            ncols=2,
            frameon=False,
            labelcolor=FOREGROUND,
        )
        legend.set_zorder(5)
        # the readout above the axes: it never covers a curve
        self._readout = ax.set_title("no training yet", loc="left", color=FOREGROUND, fontsize=8)
        self._marker = ax.axvline(0, color="#aaaaaa", lw=0.8, visible=False)
        self._round_lines: list = []
        self.ax, self.twin = ax, twin
        self.mpl_connect("motion_notify_event", self._on_motion)
        self.mpl_connect("axes_leave_event", self._on_leave)

    # ------------------------------------------------------------------ data

    def clear(self) -> None:
        self.loss, self.dice, self.round_starts = [], [], []
        self._hover = None
        self._refresh()

    def start_round(self) -> None:
        self.round_starts.append(len(self.loss))
        self._refresh()

    def add_epoch(self, loss: float | None) -> None:
        self.loss.append(float("nan") if loss is None else float(loss))
        self.dice.append(None)
        self._refresh()

    def set_dice(self, dice: float | None) -> None:
        if self.dice and dice is not None:
            self.dice[-1] = float(dice)
            self._refresh()

    # ------------------------------------------------------------------ drawing

    def _refresh(self) -> None:
        n = len(self.loss)
        epochs = list(range(1, n + 1))
        self._loss_line.set_data(epochs, self.loss)
        self._dice_line.set_data(epochs, [math.nan if d is None else d for d in self.dice])
        for line in self._round_lines:
            line.remove()
        self._round_lines = [
            self.ax.axvline(s + 0.5, color="#777777", lw=0.8, ls="--")
            for s in self.round_starts
            if 0 < s < n
        ]
        self.ax.set_xlim(0.5, max(n, 1) + 0.5)
        finite = [v for v in self.loss if _finite(v)]
        top = max(finite) if finite else 1.0
        self.ax.set_ylim(0.0, top * 1.15 if top > 0 else 1.0)
        self._show_readout(self._hover if self._hover is not None and self._hover < n else None)
        self.draw_idle()

    def value_text(self, i: int) -> str:
        """The readout of epoch ``i`` (0-based): its round, loss and Dice."""
        round_no = sum(1 for s in self.round_starts if s <= i)
        loss, dice = self.loss[i], self.dice[i]
        text = f"epoch {i + 1}" + (f" (round {round_no})" if round_no else "")
        text += f": loss {loss:.4f}" if _finite(loss) else ": loss -"
        return text + (f", Dice {dice:.3f}" if _finite(dice) else "")

    def _show_readout(self, i: int | None) -> None:
        n = len(self.loss)
        if n == 0:
            self._readout.set_text("no training yet")
        elif i is None:
            self._readout.set_text("latest " + self.value_text(n - 1))
        else:
            self._readout.set_text(self.value_text(i))
        self._marker.set_visible(i is not None)
        if i is not None:
            self._marker.set_xdata([i + 1, i + 1])

    def _on_motion(self, event) -> None:
        n = len(self.loss)
        if event.inaxes not in (self.ax, self.twin) or event.xdata is None or n == 0:
            return self._on_leave(event)
        i = min(max(round(event.xdata) - 1, 0), n - 1)
        if i != self._hover:  # redraw only when the nearest epoch changes
            self._hover = i
            self._show_readout(i)
            self.draw_idle()

    def _on_leave(self, event=None) -> None:
        if self._hover is not None:
            self._hover = None
            self._show_readout(None)
            self.draw_idle()
