"""Text encoders for the language branch of the models."""

from src_models.text.encoder import (
    DEFAULT_ENCODER,
    TextEncoder,
    TextEncoderError,
    TextFeatures,
    default_model_dir,
    validate_text,
)

__all__ = [
    "DEFAULT_ENCODER",
    "TextEncoder",
    "TextEncoderError",
    "TextFeatures",
    "default_model_dir",
    "validate_text",
]
