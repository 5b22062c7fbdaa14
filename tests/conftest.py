import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tests compare runs bit for bit: a thread count that follows the machine's load
# (gphm.io.threads, which importing gphm.cli switches on) would change float reduction
# order between two runs in one test. tests/io/test_threads.py tests it explicitly.
os.environ.setdefault("GPHM_ADAPTIVE_THREADS", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
