import os

import torch

# Under pytest-xdist every worker would start as many torch threads as there are cores; on the 2-core CI
# machine that oversubscribes the CPU and makes the tiny tensor ops of these tests several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
