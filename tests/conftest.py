import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test. The tests run beside other jobs on 2 cores: two
    spinning OpenMP threads make tiny models up to 100x slower (benchmarks/bench_responsiveness.py),
    and one thread keeps float results repeatable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def text_encoder():
    """The real default encoder (all-MiniLM-L6-v2 from its package), loaded once per session."""
    from src_models.text import TextEncoder

    return TextEncoder()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
