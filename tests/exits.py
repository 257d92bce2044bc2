"""A brought model that ends the process where EXIT_AT says: at import, in __init__, in training, with
os._exit, or in a pool worker (tests/test_failures.py and bench/bench_chaos.py; line numbers are asserted)."""
import multiprocessing
import os
import sys

from torch import nn

if os.environ.get("EXIT_AT") == "import":
    sys.exit(2)


class Net(nn.Module):
    def __init__(self, input_dim: int = 10):
        super().__init__()
        if os.environ.get("EXIT_AT") == "init":
            sys.exit(3)
        self.fc = nn.Linear(input_dim, 1)

    def forward(self, x):
        if self.training and os.environ.get("EXIT_AT") == "training":
            sys.exit(9)
        if self.training and os.environ.get("EXIT_AT") == "os-exit":
            os._exit(6)
        if self.training and os.environ.get("EXIT_AT") == "worker" and multiprocessing.parent_process():
            sys.exit(7)
        return self.fc(x)
