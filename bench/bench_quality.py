"""Do the conversions reach what the data allows? The champion against tuned gradient boosting and against
`threshold`, on five regression tables of different shapes:

| table | rows | features | classes | what it tests |
|---|---|---|---|---|
| wine | 4,898 | 11 numeric | thresholds:6.5 (22% positives) | the imbalanced binary case, 5 folds |
| diamonds | 53,940 | 6 numeric, 3 text | quantile:3 | large, skewed target; gradient boosting is strong |
| penguins | 342 | 3 numeric, 3 text, missing values | quantile:3 | small data, 5 folds: wide intervals |
| friedman1 | 20,000 | 10 numeric, 5 of them noise | quantile:3 | a smooth non-linear truth, one split |
| diabetes | 442 | 10 numeric | quantile:3 | scikit-learn's bundled table (the default data), 5 folds |

Each table runs the real `reg2cls convert` once, as a command, in a fresh temporary store; the reference rows and
the `threshold` row come from the same run, so every number is measured side by side. The reference has the
networks' budget (stages/reference.py): `reference_hgb`, a HistGradientBoostingClassifier early-stopped on the
validation rows and searched with tune.n_trials Optuna trials, and `reference_hgb_regressor`, a
HistGradientBoostingRegressor cut at the class edges. The tuned reference is the one of the two better on
validation. The champion is chosen on validation; the table reports test macro-F1 (pooled over the folds) with
the leaderboard's 95% bootstrap intervals, and champion - reference with the leaderboard's paired interval (the
same resamples of the pooled test predictions, stats.py). The validation macro-F1 of both is printed too:
compare model options on it, never on the test columns.

Goal (issue 26): champion - tuned reference >= -0.005 on every table at the default budget; >= 0 on at least half
of them at `--budget best`.

`--references` fits the reference rows only (no convert: seconds, not minutes), beside the reference as it was
before it had the networks' budget (a default HistGradientBoostingClassifier, its rule fitted on validation), on
the same splits: each one's pooled test macro-F1 and its paired difference to the old one, and the fit's wall time.

    python bench/bench_quality.py                                   # every table, the default budget
    python bench/bench_quality.py --tables penguins --rows 300      # one table, quickly (a row cap)
    python bench/bench_quality.py --tables wine,diamonds --budget best
    python bench/bench_quality.py --tables wine --set model.ensemble=8   # extra convert options
    python bench/bench_quality.py --references [--tables wine]      # the reference rows alone, old and new
    python bench/bench_quality.py --data-dir /work/shared/data      # from a worktree outside the checkout
    python bench/bench_quality.py --tables penguins --boards out/   # also every row's scores: out/penguins.csv
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
# name -> (source: a file of --data-dir, builtin: or synthetic:, target, classes)
TABLES = {
    "wine": ("wine_white.csv", "quality", "thresholds:6.5"),
    "diamonds": ("diamonds.csv", "price", "quantile:3"),
    "penguins": ("penguins.csv", "body_mass_g", "quantile:3"),
    "friedman1": ("synthetic:friedman1?rows=20000", "target", "quantile:3"),
    "diabetes": ("builtin:diabetes", "target", "quantile:3"),
}


def source_of(name: str, data_dir: Path, rows: int, tmp: Path) -> str:
    """`name`'s data source, with at most `rows` rows (0: all): a sample of a file (or of the built-in table)
    written into `tmp`, or the synthetic generator asked for fewer rows."""
    source = TABLES[name][0]
    if source.startswith("synthetic:"):
        return source if not rows else source.split("?")[0] + f"?rows={min(rows, 20000)}"
    if not source.startswith("builtin:"):
        source = str(data_dir.resolve() / source)
    if not rows:
        return source
    from pipeline.data import load

    frame = load(source)
    sample = tmp / f"{name}_{rows}.csv"
    frame.sample(n=min(rows, len(frame)), random_state=0).to_csv(sample, index=False)
    return str(sample)


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


def references(name: str, source: str, budget: str) -> None:
    """The reference rows alone on `name`'s splits (as convert makes them), beside the old default classifier:
    pooled test macro-F1 [95% CI], the paired difference to the old one, and each fit's wall seconds."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier

    from pipeline import config, data, decision, stats
    from pipeline.stages.reference import fit_reference
    from pipeline.train import use_threads

    use_threads(1)  # as in convert's worker
    _, target, classes = TABLES[name]
    cfg = config.load(None, {"data.source": source, "data.target": target, "data.classes": classes,
                             "budget": budget})
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


def row(name: str, board: pd.DataFrame, seconds: float) -> tuple[str, float]:
    """One table's line of the results (markdown) and champion - tuned reference."""
    top = board[board["champion"]].iloc[0]
    refs = board[board["strategy"].isin(["reference_hgb", "reference_hgb_regressor"])]
    ref = refs.loc[refs["val_f1_macro"].idxmax()]  # the tuned reference: the better of the two on validation
    bar = board[board["strategy"] == "threshold"].iloc[0]
    # the reference row's vs_champion is reference - champion on the same resamples: turned round here
    d, lo, hi = -ref["vs_champion"], -ref["vs_champion_high"], -ref["vs_champion_low"]

    def ci(r) -> str:
        return f"{r['f1_macro']:.3f} [{r['f1_macro_ci_low']:.3f}, {r['f1_macro_ci_high']:.3f}]"

    return (f"| {name} | {TABLES[name][2]} | {ci(ref)} | {ci(top)} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
            f"| {bar['f1_macro']:.3f} | {seconds:.0f} s | {top['strategy']} ({top['stage']}); validation: "
            f"champion {top['val_f1_macro']:.3f}, {ref['strategy']} {ref['val_f1_macro']:.3f} |"), d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated, of: " + ",".join(TABLES))
    parser.add_argument("--rows", type=int, default=0, help="at most this many rows a table (0: all)")
    parser.add_argument("--budget", default="default", help="convert's --budget (fast, default, best)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to convert")
    parser.add_argument("--references", action="store_true", help="the reference rows alone, old and new")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="where the tables are (default: %(default)s)")
    parser.add_argument("--boards", type=Path, help="also write each table's whole leaderboard here (NAME.csv)")
    opts = parser.parse_args()
    names = [t.strip() for t in opts.tables.split(",") if t.strip()]
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        parser.error(f"unknown table(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    extra = ["--budget", opts.budget, *(a for kv in opts.set for a in ("--set", kv))]
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    print(f"budget {opts.budget}, rows {opts.rows or 'all'}, options {' '.join(extra[2:]) or 'none'}")
    if not opts.references:
        print("| data | classes | tuned gradient boosting | champion | champion − reference | threshold | wall "
              "| champion (validation macro-F1) |\n|---|---|---|---|---|---|---|---|", flush=True)
    met = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            source = source_of(name, opts.data_dir, opts.rows, Path(tmp))
            if opts.references:
                references(name, source, opts.budget)
                continue
            _, target, classes = TABLES[name]
            args = ["--data", source, "--target", target, "--classes", classes, *extra]
            board, seconds = leaderboard(Path(tmp), name, args)
        if opts.boards:  # every row's validation scores: compare options on these, never on test
            opts.boards.mkdir(parents=True, exist_ok=True)
            board.to_csv(opts.boards / f"{name}.csv", index=False)
        line, d = row(name, board, seconds)
        met.append((name, d))
        print(line, flush=True)
    if met:
        print(f"champion >= reference - 0.005 on {sum(d >= -0.005 for _, d in met)} of {len(met)} tables; "
              f">= reference on {sum(d >= 0 for _, d in met)}: "
              + ", ".join(f"{name} {d:+.3f}" for name, d in met))


if __name__ == "__main__":
    main()
