"""Simulated mouse clicks on a napari layer, through napari's own mouse callbacks: what the
click-mode tests and ``scripts/screenshot_click_mode.py`` press (a real vispy event needs a
canvas under a pointer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MouseEvent:
    """What napari's mouse callbacks read of a vispy mouse event."""

    type: str
    position: tuple[float, ...]
    button: int = 1
    modifiers: tuple[str, ...] = ()
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list[float] | None = None
    up_direction: list[float] | None = None
    dims_displayed: list[int] = field(default_factory=lambda: [0, 1])


def click(layer, world: tuple[float, float], **kwargs) -> None:
    """A press and release at ``world`` on ``layer`` (``button=2`` or ``modifiers=("Control",)``
    for a remove-click)."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    for kind, callbacks in (
        ("mouse_press", mouse_press_callbacks),
        ("mouse_release", mouse_release_callbacks),
    ):
        callbacks(
            layer, ReadOnlyWrapper(MouseEvent(kind, world, **kwargs), exceptions=("handled",))
        )
