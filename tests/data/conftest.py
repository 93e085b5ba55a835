"""Fixtures for the data-layer tests: small synthetic datasets in temporary folders."""

from __future__ import annotations

import pytest

from src_models.data.synthetic import write_dataset


@pytest.fixture(scope="session")
def qata_split(tmp_path_factory):
    """A small QaTa-like split (8 images, 64 px) in the LViT layout with text.csv."""
    out = tmp_path_factory.mktemp("synth") / "Train_Folder"
    return write_dataset(out, "qata", n=8, size=64, seed=1)


@pytest.fixture(scope="session")
def referring_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_ref") / "Train_Folder"
    return write_dataset(out, "referring", n=6, size=64, seed=2)
