import pytest
import torch

import parscale_ear as pe


@pytest.fixture
def tiny():
    """A tiny 32x32 model of the shipped design's kind (flow stages) in eval mode with fixed weights."""
    torch.manual_seed(0)
    return pe.create_model("tiny-32-flow").eval()
