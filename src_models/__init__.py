"""Pure-PyTorch library behind napari-lvit: models, text encoders, data, training, inference.

Never imports napari or Qt.
"""

__version__ = "0.1.0"
