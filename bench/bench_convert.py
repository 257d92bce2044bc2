"""Wall time of the default `reg2cls convert` (built-in data, every stage), process start included.

Runs the real CLI in a fresh directory with a new SQLite store, so store creation counts too, then once
more on the same store (every stage reused). Prints the fresh run against the budgets: 60 s for
baseline and head swap, 90 s with every stage, tuning included.

    python bench/bench_convert.py [extra convert args...]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

BUDGETS_S = (60.0, 90.0)


def timed(args: list[str], cwd: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "convert", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    args = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cold = timed(args, tmp)
        warm = timed(args, tmp)
    print(f"reg2cls convert {' '.join(args) or '(defaults)'}")
    budgets = " / ".join(f"{cold / b:.2f} of {b:.0f} s" for b in BUDGETS_S)
    print(f"  fresh store, all stages trained : {cold:6.1f} s  = {budgets}")
    print(f"  same store, all stages reused   : {warm:6.1f} s  = {warm / cold:.2f} of the fresh run")


if __name__ == "__main__":
    main()
