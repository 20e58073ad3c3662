import os

import pytest
import torch

# Under pytest-xdist every worker would start as many torch threads as there are cores; on the 2-core CI
# machine that oversubscribes the CPU and makes the tiny tensor ops of these tests several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is faster, and spares a loaded CPU the thread oversubscription (a
    second thread only spin-waits; on a busy 2-core machine that turned a 0.1 s training loop into tens of
    seconds). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
