"""CT windows on napari image layers: the preset choices of a combo box, the window kept in a
layer's metadata (``"window"``: ``[level, width]`` in HU, what the model's input follows) and
its contrast limits. No widget state lives here; the Segment widget wires it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from src_models.data.windows import PRESETS, Window, as_window, preset_name, window_applies

if TYPE_CHECKING:
    from napari.layers import Image

NO_WINDOW = "none"
#: the presets offered (soft tissue is the mediastinal window: one entry)
WINDOW_PRESETS = ("lung", "mediastinum", "bone", "brain")


def window_label(name: str, window: Window) -> str:
    """``"lung (W1500 L-600)"``: how radiologists name a window."""
    return f"{name} (W{window.width:g} L{window.level:g})"


def window_choices(custom: Window | None = None) -> list[tuple[str, str]]:
    """``(label, value)`` pairs: none, the presets, and ``custom`` when it is none of them."""
    choices = [(NO_WINDOW, NO_WINDOW)]
    choices += [(window_label(n, PRESETS[n]), n) for n in WINDOW_PRESETS]
    if custom is not None and preset_name(custom) is None:
        choices.append((window_label("custom", custom), choice_value(custom)))
    return choices


def choice_value(window: Window | None) -> str:
    """The combo value that shows ``window``."""
    if window is None:
        return NO_WINDOW
    return preset_name(window) or f"{window.level:g},{window.width:g}"


def layer_window(layer: Image | None) -> Window | None:
    """The CT window kept with ``layer`` (``None``: none, or not a usable one)."""
    if layer is None:
        return None
    try:
        return as_window(layer.metadata.get("window"))
    except ValueError:
        return None


def apply_window(layer: Image, window: Window | None) -> str | None:
    """Keep ``window`` with ``layer`` and show it (its contrast limits; ``None``: the
    layer's own range again). Returns why it cannot, for an 8-bit or colour layer."""
    if window is not None and not window_applies(layer.data.dtype, layer.rgb):
        return f"{layer.name} is an 8-bit or colour image: CT windows apply to Hounsfield units"
    if window is None:
        layer.metadata.pop("window", None)
        layer.reset_contrast_limits_range()
        layer.reset_contrast_limits()
    else:
        layer.metadata["window"] = [window.level, window.width]
        layer.contrast_limits = window.range
    return None
