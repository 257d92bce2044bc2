"""Default `reg2cls convert` at growing sizes: wall time, time per row and peak memory vs the data's size.

Each size runs `reg2cls convert --data synthetic:friedman1?rows=N --quiet` as its own process, with a fresh
MLflow store in a temporary folder. Its memory is the proportional set size (PSS, /proc/<pid>/smaps_rollup)
summed over the command and every process under it (its --jobs workers, tune's), sampled every 0.1 s: pages
the processes share (the data handed to workers in shared memory, libraries) count once, and the workers'
memory counts too (the largest process alone would hide it). The data's float32 size is rows x 10 features
x 4 bytes. Goals: time
grows at most linearly with rows; peak memory at most 4x the data's float32 size plus a fixed overhead (the
smallest size's peak stands for that overhead); 1M rows within 15 minutes on the 2-core machine.

    python bench/bench_scale.py [--rows 10000 100000] [--million]

--million adds 1,000,000 rows: expect it to take many minutes (and check the 15-minute goal).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

FEATURES = 10  # synthetic:friedman1


def _tree(pid: int) -> list[int]:
    """pid and every process under it."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _tree(int(child))
    except OSError:  # it ended meanwhile
        pass
    return out


def _pss(pid: int) -> int:
    """Proportional set size of one process in bytes (0 once it has ended)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def convert(rows: int, extra: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak summed PSS in bytes, exit code, last output lines) of one default convert."""
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        cmd = [sys.executable, "-m", "pipeline", "convert", "--data", f"synthetic:friedman1?rows={rows}", "--quiet",
               "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["PYTHONPATH"] = os.getcwd()
        log = open(os.path.join(tmp, "out.log"), "w+")
        seconds, peak, rc = sampled(cmd, tmp, env, log)
        log.seek(0)
        tail = "".join(log.readlines()[-3:])
        return seconds, peak, rc, tail


# a sample reads each process's smaps_rollup, ~4 ms of a core for one with torch loaded: every 0.1 s that took a
# fifth of a core from the convert it timed (the default convert's wall +5 s of 20); the peak (the imported
# libraries, present for seconds) is caught as well twice a second
SAMPLE_S = 0.5


def sampled(cmd: list[str], cwd, env: dict[str, str], log) -> tuple[float, int, int]:
    """(wall seconds, peak PSS summed over the process and its children in bytes, exit code) of `cmd`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_pss(p) for p in _tree(proc.pid)))
        time.sleep(SAMPLE_S)
    return time.perf_counter() - start, peak, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--million", action="store_true", help="also 1,000,000 rows (many minutes)")
    ap.add_argument("extra", nargs="*", help="more convert options after --, e.g. -- --threads 1")
    args = ap.parse_args()
    sizes = sorted(set(args.rows + ([1_000_000] if args.million else [])))
    print(f"default convert on synthetic:friedman1 ({FEATURES} features), one process per size")
    print(f"{'rows':>9} {'wall s':>8} {'us/row':>8} {'peak MiB':>9} {'data MiB':>9} {'(peak-first)/data':>17}")
    first = None
    for rows in sizes:
        seconds, peak, rc, tail = convert(rows, args.extra)
        data = rows * FEATURES * 4
        first = first if first is not None else peak
        extra = (peak - first) / data if rows != sizes[0] else float("nan")
        print(f"{rows:9d} {seconds:8.1f} {seconds / rows * 1e6:8.1f} {peak / 2**20:9.0f} {data / 2**20:9.1f} "
              f"{extra:17.2f}" + ("" if rc == 0 else f"  FAILED (exit {rc}): {tail.strip()}"), flush=True)


if __name__ == "__main__":
    main()
