import os

# One torch thread unless the caller chose: the whole suite then runs at one thread count (the CLI's own choice,
# args.set_cpu_threads, leaves an explicit OMP_NUM_THREADS alone), so what the API and the CLI compute in one process
# compares bit for bit, and a CPU shared with other jobs is not oversubscribed.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import parscale_ear as pe  # noqa: E402


@pytest.fixture
def tiny():
    """A tiny 32x32 model of the shipped design's kind (flow stages) in eval mode with fixed weights."""
    torch.manual_seed(0)
    return pe.create_model("tiny-32-flow").eval()
