import os

import pytest
import torch

# Tests must never touch the network and must be quiet and cheap on 2 cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
