"""Segmentation models. Every model has the same call signature::

    logits = model(image, text=None, text_mask=None)

- ``image``: float tensor ``[B, C, H, W]`` scaled to [0, 1] (``C == model.in_chans``,
  ``H == W == model.img_size``).
- ``text``: token features ``[B, L, model.text_dim]`` from a :class:`TextEncoder`, or ``None``.
- ``text_mask``: bool ``[B, L]``, True for real tokens, False for padding.
- returns logits ``[B, 1, H, W]`` (apply a sigmoid for probabilities).

Attributes every model has: ``uses_text``, ``text_dim``, ``img_size``, ``in_chans``, ``config``
(a dataclass), and after :func:`create_model` also ``model_name`` and ``model_config``.
"""

from src_models.models.registry import create_model, is_model, list_models, register_model

# isort: split
# The families after the registry: importing them runs their @register_model (timm style).
from src_models.models import lvit, reclmis, sks, unet  # noqa: F401

__all__ = ["create_model", "is_model", "list_models", "register_model"]
