"""napari-lvit: text-guided segmentation in napari. Contributions are loaded lazily by npe2."""

__version__ = "0.1.0"
