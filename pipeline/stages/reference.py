"""reference: gradient boosting on the same splits, with the networks' budget: is the network as good as the data
allows? Two rows of the leaderboard (stage `compare`), neither a candidate for champion:

- `reference_hgb`: a gradient-boosting classifier of the classes, with a decision rule fitted on validation
  like every trained network's (decision.fit_scores).
- `reference_hgb_regressor`: a gradient-boosting regressor of the continuous target, cut at the class edges
  (`Prepared.edges`): the reference's own `threshold`, no rule, as threshold has none.

The same budget as the networks: early stopping, and `tune.n_trials` Optuna trials (TPE, seeded with `seed`,
every trial fitted with the same seed; trial 0 is scikit-learn's defaults) on every split, as tune searches:
cross-fitted, each outer fold searches on its own validation rows only and keeps its own best configuration,
never one chosen on rows that are another fold's test rows. The classifier is searched on `tune.metric`
under its own decision (argmax), as tune's trials are; the regressor on validation squared error, a
regressor's own objective (the class edges only cut its output afterwards, as threshold cuts the network's).

Early stopping watches the validation rows (scikit-learn's `X_val`), where the networks stop (train.fit keeps
the epoch with the lowest validation loss): the same rows for the same job, and the reference trains on all
the training rows, as they do; an inner split of the training rows would train it on 10% fewer.

Library: scikit-learn's HistGradientBoosting (LightGBM's histogram algorithm): already a dependency (no
native library to install beside torch), missing values and early stopping on a given validation set
built in, and a fit on a few thousand rows takes tenths of a second on one thread, so the whole reference
(a search on every fold, both rows) fits in a worker beside the baseline within seconds (bench/bench_quality.py).

No MLflow in the fit: convert starts `fit_reference` in a worker (jobs.submit) while the baseline trains, and
compare logs its rows (`reference_runs`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import decision, metrics, tracking
from ..config import TUNE_METRICS, Config
from ..data import Prepared, to_classes
from ..train import use_threads
from .common import log_predictions

# name -> (low, high, log, integer): what a trial searches; trial 0 is scikit-learn's default of each. A fit's cost
# grows with its rounds, and a low learning rate takes many before early stopping ends it: learning rates from
# 0.05 and at most 300 rounds keep the whole search (both rows) within about 10 default fits on large tables
SEARCH = {"learning_rate": (0.05, 0.3, True, False), "max_leaf_nodes": (7, 127, True, True),
          "min_samples_leaf": (5, 100, True, True), "l2_regularization": (0.0, 1.0, False, False)}
DEFAULTS = {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20, "l2_regularization": 0.0}
MAX_ITER = 300     # boosting rounds at most; early stopping ends most fits long before
PATIENCE = 10      # rounds without a better validation loss before stopping (scikit-learn's default)


@dataclass
class Reference:
    """One reference row fitted on every split, ready to log as its run (`reference_runs`)."""
    strategy: str                              # reference_hgb | reference_hgb_regressor
    model: str                                 # the scikit-learn class
    params: list[dict]                         # each split's configuration, chosen on its validation rows
    trials: int                                # configurations tried on each split
    rounds: list[int]                          # boosting rounds each split's fit kept (early stopping)
    seconds: float                             # search and fits, over every split
    val: list[dict[str, float]]                # validation metrics of each split, under its rule
    rules: list[dict | None]                   # the decision rule of each split (None: cut at the class edges)
    test: list[tuple[np.ndarray, np.ndarray]]  # each split's test (probabilities, classes its rule picked)
    latency_ms_per_1k: float


def fit_reference(cfg: Config, splits: list[Prepared]) -> list[Reference]:
    """Both reference rows on `splits`: the classifier and the regressor cut at the class edges."""
    _import_estimators()
    return [_fit(cfg, splits, regressor=False), _fit(cfg, splits, regressor=True)]


def _import_estimators() -> None:
    """scikit-learn's gradient boosting imported, and the OpenMP and BLAS pools it brings held to this process's
    torch threads (train.use_threads: 1 in a worker, train.threads in the command). A limit reaches only the
    libraries already loaded, and nothing had loaded these: unlimited, a worker's fit spins a thread per core
    beside the other workers' trainings."""
    import sklearn.ensemble  # noqa: F401
    import torch

    use_threads(torch.get_num_threads())


def _estimator(params: dict, seed: int, regressor: bool):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kind = HistGradientBoostingRegressor if regressor else HistGradientBoostingClassifier
    return kind(**params, max_iter=MAX_ITER, early_stopping=True, n_iter_no_change=PATIENCE, random_state=seed)


def _fit_one(params: dict, data: Prepared, seed: int, regressor: bool):
    """One fit on `data`'s training rows, stopped early on its validation rows."""
    target = (lambda split: split.y.numpy()) if regressor else (lambda split: split.c.numpy())
    return _estimator(params, seed, regressor).fit(data.train.x.numpy(), target(data.train),
                                                   X_val=data.val.x.numpy(), y_val=target(data.val))


def _objective(model, data: Prepared, metric: str, regressor: bool) -> float:
    """What a configuration is chosen on, on the validation rows: squared error for the regressor, `metric`
    (macro-F1 or log loss) under its own decision (argmax) for the classifier."""
    x, c = data.val.x.numpy(), data.val.c.numpy()
    if regressor:
        return float(np.mean((model.predict(x) - data.val.y.numpy()) ** 2))
    proba = model.predict_proba(x)
    return metrics.log_loss(c, proba) if metric == "val/log_loss" else metrics.f1_macro(c, proba.argmax(1),
                                                                                         data.n_classes)


def _search(cfg: Config, data: Prepared, regressor: bool) -> tuple[dict, object, int]:
    """(best configuration, its model fitted on `data`, trials run): `tune.n_trials` trials on `data`'s
    validation rows, trial 0 the defaults; with one trial or none, the defaults (no study to open)."""
    if cfg.tune.n_trials <= 1:
        return dict(DEFAULTS), _fit_one(DEFAULTS, data, cfg.seed, regressor), 1
    import optuna

    from ..study import quiet_optuna

    direction = "minimize" if regressor else TUNE_METRICS[cfg.tune.metric]
    fitted = {}

    def objective(trial: optuna.Trial) -> float:
        params = {name: (trial.suggest_int if integer else trial.suggest_float)(name, low, high, log=log)
                  for name, (low, high, log, integer) in SEARCH.items()}
        fitted[trial.number] = model = _fit_one(params, data, cfg.seed, regressor)
        return _objective(model, data, cfg.tune.metric, regressor)

    with quiet_optuna():
        study = optuna.create_study(direction=direction,
                                    sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=4))
        study.enqueue_trial(DEFAULTS)
        study.optimize(objective, n_trials=cfg.tune.n_trials)
    return study.best_params, fitted[study.best_trial.number], len(study.trials)


def _fit(cfg: Config, splits: list[Prepared], regressor: bool) -> Reference:
    """A search on every split's own validation rows, its best model kept: validation metrics, rules and test
    decisions per split."""
    start = time.perf_counter()
    params, val, rules, test, rounds = [], [], [], [], []
    for data in splits:
        chosen, model, trials = _search(cfg, data, regressor)
        params.append(chosen)
        rounds.append(int(model.n_iter_))
        if regressor:
            rules.append(None)
            val.append(metrics.classification(data.val.c.numpy(), *_cut(model, data.val.x.numpy(), data)))
            test.append(_cut(model, data.test.x.numpy(), data))
        else:
            val_scores = decision.scores_of_proba(model.predict_proba(data.val.x.numpy()))
            rules.append(decision.fit_scores(val_scores, data.val.c.numpy()))
            val.append(metrics.classification(data.val.c.numpy(), *decision.apply(rules[-1], val_scores)))
            test.append(decision.apply(rules[-1], decision.scores_of_proba(model.predict_proba(data.test.x.numpy()))))
    seconds = time.perf_counter() - start
    x = np.random.default_rng(0).normal(size=(1000, splits[0].n_features)).astype(np.float32)
    latency = metrics.median_ms(lambda: model.predict(x), repeats=5)
    return Reference("reference_hgb_regressor" if regressor else "reference_hgb",
                     f"sklearn.ensemble.{type(model).__name__}", params, trials, rounds, seconds, val, rules, test,
                     latency)


def _cut(model, x: np.ndarray, data: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """The regressor's output in target units cut at the class edges: (one-hot (N, K) 'probabilities', classes),
    as threshold_proba does for the network's regressor."""
    pred = to_classes(model.predict(x) * data.y_std + data.y_mean, data.edges)
    return np.eye(data.n_classes)[pred], pred


def reference_runs(cfg: Config, splits: list[Prepared], fitted: list[Reference]) -> list:
    """Each reference row as a run of its own (stage compare): its search, configuration and rules as params
    (per fold `fold_<i>.rule.*`), its validation metrics (the mean over folds), its test predictions logged
    like every strategy's. Returns the runs."""
    return [_reference_run(cfg, splits, reference) for reference in fitted]


def _reference_run(cfg: Config, splits: list[Prepared], fitted: Reference):
    with tracking.start(fitted.strategy, "compare", strategy=fitted.strategy,
                        tags={"split_key": splits[0].split_key, "seed": str(cfg.seed),
                              "folds": str(len(splits))}) as run_id:
        for data, rule, rounds, params in zip(splits, fitted.rules, fitted.rounds, fitted.params):
            prefix = "" if len(splits) == 1 else f"fold_{data.fold}."
            shown = decision.as_params(rule) if rule else {"rule.decision": "cut at the class edges"}
            shown |= {"rounds": rounds, **{f"best.{k}": v for k, v in params.items()}}
            tracking.log_params({prefix + k: v for k, v in shown.items()})
        tracking.log_params({"model": fitted.model, "seed": cfg.seed, "folds": len(splits), "trials": fitted.trials,
                             "early_stopping": f"validation loss, patience {PATIENCE}, at most {MAX_ITER} rounds"})
        values = {f"val/{k}": float(np.mean([v[k] for v in fitted.val])) for k in fitted.val[0]}
        values |= log_predictions([(data, *test) for data, test in zip(splits, fitted.test)], seed=cfg.seed)
        tracking.log_metrics({**values, "cost/train_seconds": fitted.seconds,
                              "cost/latency_ms_per_1k": fitted.latency_ms_per_1k})
    return tracking.get_run(run_id)
