"""Click mode: correct a proposal with clicks and a box instead of the brush.

Beside the image and its proposal, a Points layer ``<image> [clicks]`` takes the clicks (left
click adds to the mask; Ctrl+click or the right button removes from it; Ctrl+Z on the layer
removes the last click) and a Shapes layer ``<image> [box]`` takes a rectangle around the
object. Every change re-segments the shown plane with the model's prompt inputs
(:meth:`src_models.inference.Predictor.predict` with ``clicks``, ``box``, ``previous``); the
Segment widget runs it in a worker and writes the Labels layer. The brush still works on top:
the next click starts from what is painted.

State and actions apart from Qt: :class:`ClickHistory` (which mask a prompt change starts from,
and the results kept for undo) and the coordinate helpers have no Qt; :class:`ClickMode` owns the
two napari layers and their callbacks and tells its owner when the prompts changed.

Coordinates: a click is taken from the Points layer's data space through world coordinates into
the image layer's data space (so a Points layer with another scale or translate still lands on
the right pixel); clicks outside the image or on another slice are left out and counted.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Points, Shapes

CLICKS_SUFFIX = " [clicks]"
BOX_SUFFIX = " [box]"
ADD_COLOR = "lime"
REMOVE_COLOR = "red"
#: the modifier that makes a click remove (besides the right mouse button)
REMOVE_MODIFIER = "Control"
TOGGLE_KEY = "Shift-P"

Click = tuple[float, float, int]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PlanePrompts:
    """The prompts of one image plane in its pixel coordinates; ``left_out``: clicks that fell
    outside the image or on another slice."""

    clicks: tuple[Click, ...]
    box: Box | None
    left_out: int = 0

    @property
    def empty(self) -> bool:
        return not self.clicks and self.box is None


def _to_image(layer: Any, image: Any, coords: np.ndarray) -> np.ndarray:
    """``coords`` ``[N, D]`` in ``layer``'s data space -> ``[N, image.ndim]`` in ``image``'s."""
    out = np.empty((len(coords), image.ndim), float)
    for i, point in enumerate(coords):
        world = layer.data_to_world(point)
        out[i] = np.asarray(image.world_to_data(world), float)[-image.ndim :]
    return out


def _plane_shape(image: Any) -> tuple[int, int]:
    shape = image.data.shape[:-1] if image.rgb else image.data.shape
    return int(shape[-2]), int(shape[-1])


def _on_plane(points: np.ndarray, index: tuple, shape: tuple[int, int]) -> np.ndarray:
    """Which points (image data coordinates) lie on the plane ``index`` and inside it."""
    keep = np.ones(len(points), bool)
    for axis, value in enumerate(index):
        keep &= np.round(points[:, axis]) == int(value)
    y, x = points[:, -2], points[:, -1]
    keep &= (y >= -0.5) & (y < shape[0] - 0.5) & (x >= -0.5) & (x < shape[1] - 0.5)
    return keep


def plane_clicks(points: Points, image: Image, index: tuple) -> tuple[tuple[Click, ...], int]:
    """The clicks of ``points`` on the shown plane of ``image``: ``((y, x, sign), ...)`` in the
    plane's pixels, and how many were left out (outside the image, another slice)."""
    data = np.asarray(points.data, float)
    if len(data) == 0:
        return (), 0
    signs = _signs(points)
    coords = _to_image(points, image, data)
    keep = _on_plane(coords, index, _plane_shape(image))
    picked = zip(coords[keep], signs[keep], strict=True)
    clicks = tuple((float(c[-2]), float(c[-1]), int(sign)) for c, sign in picked)
    return clicks, int((~keep).sum())


def plane_box(shapes: Shapes, image: Image, index: tuple) -> Box | None:
    """The last rectangle of ``shapes`` as ``(y0, x0, y1, x1)`` in the plane's pixels, cut to
    the image; ``None`` when there is none on this plane or it misses the image."""
    kinds = list(shapes.shape_type)
    rectangles = [
        np.asarray(d, float) for d, k in zip(shapes.data, kinds, strict=True) if k == "rectangle"
    ]
    if not rectangles:
        return None
    corners = _to_image(shapes, image, rectangles[-1])
    for axis, value in enumerate(index):
        if not np.all(np.round(corners[:, axis]) == int(value)):
            return None
    height, width = _plane_shape(image)
    y0, x0 = corners[:, -2].min(), corners[:, -1].min()
    y1, x1 = corners[:, -2].max(), corners[:, -1].max()
    y0, x0, y1, x1 = max(y0, 0.0), max(x0, 0.0), min(y1, height - 1.0), min(x1, width - 1.0)
    if y1 < y0 or x1 < x0:
        return None
    return float(y0), float(x0), float(y1), float(x1)


def _signs(points: Points) -> np.ndarray:
    features = getattr(points, "features", None)
    if features is not None and "sign" in features and len(features) == len(points.data):
        return np.where(np.asarray(features["sign"], float) < 0, -1, 1)
    return np.ones(len(points.data), int)


class ClickHistory:
    """Which mask a change of prompts starts from, and the masks kept for undo.

    Adding a click continues from the labels as they are (the last result, or the user's brush
    on it), as the model was trained (the previous mask is the prediction before the click).
    A change that was seen before (undoing the last click) gives its kept mask back without the
    model. Any other change (a click deleted in the middle, a moved box) starts again from the
    labels as they were before the first click.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = int(capacity)
        self.base: np.ndarray | None = None
        self._last: tuple[tuple[Click, ...], Box | None] = ((), None)
        self._kept: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def reset(self, base: np.ndarray | None) -> None:
        """Start over on a plane whose labels are ``base`` (``None``: not known yet)."""
        self.base = None if base is None else np.asarray(base, bool).copy()
        self._last = ((), None)
        self._kept.clear()
        if self.base is not None:
            self._kept[((), None)] = self.base

    def plan(self, prompts: PlanePrompts, labels: np.ndarray) -> tuple[str, np.ndarray]:
        """``("restore", mask)`` or ``("predict", previous)`` for the new ``prompts``, with the
        plane's ``labels`` now."""
        if self.base is None:
            self.reset(labels)
        key = (prompts.clicks, prompts.box)
        kept = self._kept.get(key)
        if kept is not None:
            return "restore", kept
        last_clicks, last_box = self._last
        extends = (
            prompts.box == last_box
            and len(prompts.clicks) > len(last_clicks)
            and prompts.clicks[: len(last_clicks)] == last_clicks
        )
        return "predict", (np.asarray(labels, bool) if extends else self.base)

    def record(self, prompts: PlanePrompts, mask: np.ndarray) -> None:
        """The labels now show ``mask`` for ``prompts``."""
        key = (prompts.clicks, prompts.box)
        self._last = key
        self._kept[key] = np.asarray(mask, bool).copy()
        self._kept.move_to_end(key)
        while len(self._kept) > self.capacity:
            oldest = next(iter(self._kept))
            if oldest == ((), None):  # the start is kept: undoing every click returns to it
                self._kept.move_to_end(oldest)
                oldest = next(iter(self._kept))
            self._kept.pop(oldest)


class ClickMode:
    """The Points and Shapes layers of click mode on one image, and their callbacks.

    ``on_change()`` is called after every change of the clicks or the box (its owner reads
    :meth:`prompts` and re-segments). ``start(image)`` shows the layers (made, aligned with the
    image, when missing) and selects the Points layer in add mode; ``stop()`` leaves them on
    screen without reacting to them.
    """

    def __init__(self, viewer: napari.viewer.Viewer, on_change: Callable[[], None]) -> None:
        self.viewer = viewer
        self.on_change = on_change
        self.image: Image | None = None
        self.points: Points | None = None
        self.shapes: Shapes | None = None
        self.history = ClickHistory()

    @property
    def active(self) -> bool:
        return self.image is not None

    def start(self, image: Image) -> None:
        if self.image is image:
            self._select(self.points, "add")
            return
        self.stop()
        self.image = image
        self.points = self._points_layer(image)
        self.shapes = self._shapes_layer(image)
        self.history.reset(None)
        self.points.events.data.connect(self._on_data)
        self.shapes.events.data.connect(self._on_data)
        self.points.mouse_drag_callbacks.insert(0, self._choose_sign)
        ref = weakref.ref(self)

        def undo(_layer=None) -> None:
            mode = ref()
            if mode is not None:
                mode.undo_last_click()

        self.points.bind_key("Control-z", undo, overwrite=True)
        self._select(self.points, "add")

    def stop(self) -> None:
        for layer in (self.points, self.shapes):
            if layer is None:
                continue
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                layer.events.data.disconnect(self._on_data)
            if self._choose_sign in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._choose_sign)
            with contextlib.suppress(ValueError, KeyError):
                layer.mode = "pan_zoom"
        self.image = self.points = self.shapes = None

    def prompts(self, index: tuple = ()) -> PlanePrompts:
        """The clicks and box on the plane ``index`` of the image (none when inactive)."""
        if self.image is None:
            return PlanePrompts((), None)
        clicks, left_out = plane_clicks(self.points, self.image, index)
        return PlanePrompts(clicks, plane_box(self.shapes, self.image, index), left_out)

    def clear(self) -> None:
        """Remove every click and box (e.g. after a commit); the labels stay as they are."""
        for layer in (self.points, self.shapes):
            if layer is not None and len(layer.data):
                layer.events.data.disconnect(self._on_data)
                try:
                    layer.data = np.empty((0, layer.ndim)) if layer is self.points else []
                finally:
                    layer.events.data.connect(self._on_data)
        self.history.reset(None)

    def undo_last_click(self) -> None:
        """Remove the last click (the model is not run when its mask is kept)."""
        if self.points is not None and len(self.points.data):
            self.points.selected_data = {len(self.points.data) - 1}
            self.points.remove_selected()

    # --- napari callbacks -----------------------------------------------------------------
    def _choose_sign(self, layer: Points, event: Any) -> None:
        """Before napari's add-mode callback adds the point: its sign and colour from the
        button and modifiers of this press."""
        if layer.mode != "add":
            return
        removes = getattr(event, "button", 1) == 2 or REMOVE_MODIFIER in set(
            getattr(event, "modifiers", ()) or ()
        )
        layer.selected_data = set()  # (the colour below would also repaint selected points)
        layer.feature_defaults = {"sign": -1 if removes else 1}
        layer.current_face_color = REMOVE_COLOR if removes else ADD_COLOR

    def _on_data(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "changed")).lower()
        if action.endswith(("adding", "removing", "changing")):
            return
        self.on_change()

    # --- layers -------------------------------------------------------------------------
    def _geometry(self, image: Image) -> dict[str, Any]:
        return {
            "scale": image.scale,
            "translate": image.translate,
            "rotate": image.rotate,
            "affine": image.affine,
        }

    def _points_layer(self, image: Image) -> Points:
        from napari.layers import Points

        name = image.name + CLICKS_SUFFIX
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Points):
            return self.viewer.layers[name]
        size = max(6.0, 0.03 * max(_plane_shape(image)))  # a diameter that is seen at any zoom
        return self.viewer.add_points(
            np.empty((0, image.ndim)),
            name=name,
            ndim=image.ndim,
            features={"sign": np.empty(0, int)},
            feature_defaults={"sign": 1},
            face_color=ADD_COLOR,
            border_color="white",
            size=size,
            **self._geometry(image),
        )

    def _shapes_layer(self, image: Image) -> Shapes:
        from napari.layers import Shapes

        name = image.name + BOX_SUFFIX
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Shapes):
            return self.viewer.layers[name]
        return self.viewer.add_shapes(
            name=name,
            ndim=image.ndim,
            edge_color="yellow",
            face_color="transparent",
            edge_width=max(1.0, 0.004 * max(_plane_shape(image))),
            **self._geometry(image),
        )

    def _select(self, layer: Any, mode: str) -> None:
        if layer is None or layer not in self.viewer.layers:
            return
        self.viewer.layers.selection.active = layer
        layer.mode = mode
