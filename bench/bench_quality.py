"""Do the conversions reach what the data allows? The champion against the gradient-boosting reference and
against `threshold`, on the imbalanced binary wine table and on diamonds (three price bands).

Each data set runs the real `reg2cls convert` once, in a fresh store; the reference rows and the `threshold` row
come from the same run, so every number is measured side by side. The reference has the networks' budget
(stages/reference.py): `reference_hgb`, a HistGradientBoostingClassifier early-stopped on the validation rows and
searched with tune.n_trials Optuna trials, and `reference_hgb_regressor`, a HistGradientBoostingRegressor cut at
the class edges (the reference's own threshold). The best reference is the one of the two better on validation.
The champion is chosen on validation; the table reports test macro-F1 with the leaderboard's 95% bootstrap
intervals, the paired differences on the same resamples. The validation macro-F1 of the champion and the best
reference is printed too: compare model options on it, never on the test columns.

Goal: champion - best reference >= -0.005 on both, and champion - threshold with an interval above 0.

`--references` fits the reference rows only (no convert: seconds, not minutes), beside the reference as it was
before it had the networks' budget (a default HistGradientBoostingClassifier, its rule fitted on validation), on
the same splits: each one's pooled test macro-F1 and its paired difference to the old one, and the fit's wall time.

    python bench/bench_quality.py                       # both tables, the default convert
    python bench/bench_quality.py --only wine --set model.ensemble=8   # one table, extra convert options
    python bench/bench_quality.py --references [--only wine]           # the reference rows alone, old and new
    python bench/bench_quality.py --data-dir /work/shared/data         # from a worktree outside the checkout
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = {  # --data is a file of --data-dir
    "wine": ["--data", "wine_white.csv", "--target", "quality", "--classes", "thresholds:6.5"],
    "diamonds": ["--data", "diamonds.csv", "--target", "price", "--classes", "quantile:3"],
}


def leaderboard(store: Path, name: str, args: list[str]) -> tuple[pd.DataFrame, float]:
    """Run convert in `store`; its leaderboard and the wall seconds it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db", PYTHONPATH=str(REPO),
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "convert", "--quiet", "--experiment", name, *args],
                          env=env, cwd=store, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"convert on {name} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    exp = mlflow.get_experiment_by_name(name)
    [parent] = mlflow.search_runs([exp.experiment_id], "tags.stage = 'convert'", output_format="list")
    path = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.csv")
    return pd.read_csv(path), seconds


def references(name: str, args: list[str]) -> None:
    """The reference rows alone on `name`'s splits (as convert makes them), beside the old default classifier:
    pooled test macro-F1 [95% CI], the paired difference to the old one, and each fit's wall seconds."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier

    from pipeline import config, data, decision, stats
    from pipeline.stages.reference import fit_reference
    from pipeline.train import use_threads

    use_threads(1)  # as in convert's worker
    cfg = config.load(None, {"data.source": args[1], "data.target": args[3], "data.classes": args[5]})
    splits = data.prepare_splits(cfg.data, cfg.seed)
    t = time.perf_counter()
    old = []
    for d in splits:  # the reference before: scikit-learn's defaults, no early stopping below 10,000 rows
        clf = HistGradientBoostingClassifier(random_state=cfg.seed).fit(d.train.x.numpy(), d.train.c.numpy())
        rule = decision.fit_scores(decision.scores_of_proba(clf.predict_proba(d.val.x.numpy())), d.val.c.numpy())
        old.append(decision.apply(rule, decision.scores_of_proba(clf.predict_proba(d.test.x.numpy())))[1])
    seconds = {"default classifier (before)": time.perf_counter() - t}
    t = time.perf_counter()
    fitted = fit_reference(cfg, splits)
    seconds["both new rows"] = time.perf_counter() - t
    c = np.concatenate([d.test.c.numpy() for d in splits])
    preds = {"default classifier (before)": np.concatenate(old)}
    preds |= {r.strategy: np.concatenate([pred for _, pred in r.test]) for r in fitted}
    boot = stats.bootstrap(c, preds, splits[0].n_classes, seed=cfg.seed)
    print(f"{name} ({len(splits)} split(s), {len(c)} pooled test rows, tune.n_trials {cfg.tune.n_trials}): "
          + ", ".join(f"{k} fit {v:.1f} s" for k, v in seconds.items()))
    for row in preds:
        vs = "" if row == "default classifier (before)" else \
            f"   vs before {boot.difference(row, 'default classifier (before)')}"
        print(f"  {row:28s} test macro-F1 {boot.interval(row)}{vs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SETS), help="one data set")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to convert")
    parser.add_argument("--references", action="store_true", help="the reference rows alone, old and new")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="where the tables are (default: %(default)s)")
    opts = parser.parse_args()
    sets = {name: [str(opts.data_dir.resolve() / args[1]) if i == 1 else a for i, a in enumerate(args)]
            for name, args in SETS.items()}
    extra = [a for kv in opts.set for a in ("--set", kv)]
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    if opts.references:
        for name, args in sets.items():
            if not opts.only or name == opts.only:
                references(name, args)
        return
    head = (f"{'data':9s} {'classes':15s} {'reference_hgb':>21s} {'ref_regressor':>21s} {'champion':>21s} "
            f"{'champ-best ref':>23s} {'threshold':>9s} {'champ-threshold':>23s} {'wall s':>7s}  champion")
    lines, met = [head], []
    for name, args in sets.items():
        if opts.only and name != opts.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            board, seconds = leaderboard(Path(tmp), name, [*args, *extra])
        top = board[board["champion"]].iloc[0]
        refs = board[board["strategy"].isin(["reference_hgb", "reference_hgb_regressor"])]
        ref = refs.loc[refs["val_f1_macro"].idxmax()]  # the better reference, chosen on validation
        bar = board[board["strategy"] == "threshold"].iloc[0]
        # the reference row's vs_champion is reference - champion on the same resamples: turned round here
        d_ref, d_ref_lo, d_ref_hi = -ref["vs_champion"], -ref["vs_champion_high"], -ref["vs_champion_low"]
        classes = args[args.index("--classes") + 1]

        def ci(row) -> str:
            return f"{row['f1_macro']:.3f} [{row['f1_macro_ci_low']:.3f},{row['f1_macro_ci_high']:.3f}]"

        by = {r["strategy"]: r for _, r in refs.iterrows()}
        lines.append(
            f"{name:9s} {classes:15s} {ci(by['reference_hgb'])} {ci(by['reference_hgb_regressor'])} {ci(top)}"
            f" {d_ref:+.3f} [{d_ref_lo:+.3f},{d_ref_hi:+.3f}] {bar['f1_macro']:9.3f}"
            f" {top['vs_threshold']:+.3f} [{top['vs_threshold_low']:+.3f},{top['vs_threshold_high']:+.3f}]"
            f" {seconds:7.1f}  {top['strategy']} ({top['stage']})"
            f"  [validation macro-F1: champion {top['val_f1_macro']:.3f}, best reference {ref['strategy']} "
            f"{ref['val_f1_macro']:.3f}]")
        met.append((name, d_ref >= -0.005, top["vs_threshold_low"] > 0))
        print(lines[-1] if len(lines) > 2 else "\n".join(lines), flush=True)
    for name, matches, beats in met:
        print(f"{name}: matches the best reference (>= -0.005): {'yes' if matches else 'NO'}; beats threshold with "
              f"an interval above 0: {'yes' if beats else 'NO'}")


if __name__ == "__main__":
    main()
