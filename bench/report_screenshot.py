"""The README's screenshot of report.html: the real `reg2cls convert` on the penguins data (one split, quick
settings) in a fresh store, its report.html opened in Debian's headless Chromium, the top of the page saved
as a small PNG (a 128-colour palette).

    python bench/report_screenshot.py                      # writes bench/report.png
    python bench/report_screenshot.py --report report.html # screenshot an existing report instead
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "penguins.csv"
CHROMIUM = "/usr/bin/chromium"


def make_report(root: Path) -> Path:
    """Run convert in a fresh store under `root`; returns its report.html."""
    import mlflow

    uri = f"sqlite:///{root}/mlflow.db"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri,
           "PYTHONPATH": str(REPO)}
    data = ["--data", str(DATA), "--target", "body_mass_g"] if DATA.is_file() else []
    subprocess.run([sys.executable, "-m", "pipeline", "convert", *data, "--folds", "1", "--device", "cpu",
                    "--experiment", "screenshot", "--strategies", "threshold,linear_probe,warm_start,lp_ft",
                    "--set", "tune.n_trials=6"], env=env, cwd=root, check=True, stdout=subprocess.DEVNULL)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("screenshot")
    [parent] = mlflow.search_runs([exp.experiment_id], "tags.stage = 'convert'", output_format="list")
    return Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report.html",
                                                    dst_path=str(root)))


def screenshot(page: Path, out: Path, width: int = 1150, height: int = 1500, colours: int = 128) -> None:
    """The top `height` pixels of `page` in headless Chromium, saved as a palette PNG."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp}/profile",
                        f"--window-size={width},{height}", f"--screenshot={raw}", page.resolve().as_uri()],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        image = Image.open(raw).convert("RGB")
        out.parent.mkdir(parents=True, exist_ok=True)
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="an existing report.html (default: run convert to make one)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "report.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        page = args.report or make_report(Path(tmp))
        screenshot(page, args.out)
    print(f"{args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
