"""tune: an Optuna study over dropout, learning rate and weight decay (the study itself: study.py)."""
from __future__ import annotations

from dataclasses import asdict

from .. import tracking
from ..config import Config, UserError
from ..data import Prepared
from ..model import architecture
from ..reuse import reusable
from ..train import resolve_device
from .common import StageResult, log_classifier, log_run_inputs, say, stage_output, stands_for


def tune(cfg: Config, data: Prepared, source: StageResult, force: bool = False) -> StageResult:
    """Optuna over head and hidden dropout, learning rate and weight decay, starting from `source.model`
    (the chosen architecture and its weights). Unless `force`, a finished tune stage with the same key
    is reused; with `force` (the `tune` command: each call adds trials) this call adds `tune.n_trials`
    trials to the study. The stage run gets the best trial's params, value and model (kept from that
    trial, not retrained) and its test metrics, evaluated once here."""
    from .. import study as optuna_study

    arch = architecture(source.model)
    name = optuna_study.study_name(cfg, arch, data.split_key)
    url = optuna_study.storage_url(cfg.tune.storage, tracking.setup(None))
    sections = {"train": asdict(cfg.train), "tune": asdict(cfg.tune), "study": name}
    key, reuse = reusable("tune", sections, data.split_key, [source.model_run], force)
    if reuse:
        say(f"tune: reusing finished run {reuse} (same config, data, input model and code; --force re-runs)")
        return stage_output(reuse)
    study = optuna_study.open_study(url, name, cfg.tune.metric)  # refuses a mismatched study before any run
    device = resolve_device(cfg.train.device)
    with tracking.start("tune", "tune", tags={"stage_key": key, "source_run": source.model_run, "split_key": data.split_key,
                                              "optuna_study": name, "optuna_storage": _safe_url(url)}) as run_id:
        log_run_inputs(cfg, data)
        before, _ = optuna_study.counted(study)
        job = optuna_study.Job(cfg, data, arch, {k: v.cpu() for k, v in source.model.state_dict().items()},
                               tracking.setup(None), run_id, url, name, target=before + cfg.tune.n_trials,
                               timeout=cfg.tune.timeout or None, seed=cfg.seed + before)
        first_new = len(study.get_trials(deepcopy=False))
        say(f"tune: study '{name}' in {_safe_url(url)}: {before} trials so far, adding {cfg.tune.n_trials} "
             f"with {cfg.tune.workers} worker(s)")
        optuna_study.run_workers(job, cfg.tune.workers, say)
        optuna_study.end_orphaned_runs(study)
        states = [t.state.name for t in study.get_trials(deepcopy=False)[first_new:]]  # this run's trials
        tracking.log_metrics({f"trials/{s.lower()}": states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")})
        if "COMPLETE" not in states:
            if "FAIL" in states:
                raise RuntimeError(f"every trial this run started in study '{name}' failed or was pruned; "
                                   "the first error is logged above")
            if not states:
                raise UserError(f"no trial started in study '{name}' within --timeout {cfg.tune.timeout:g} s; "
                                "give it more time")
            raise UserError(f"no trial this run started in study '{name}' completed (all pruned); "
                            "run more trials or use --pruner none")
        best = study.best_trial
        tracking.log_params({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
        tracking.set_tags({"best_trial_run": best.user_attrs["mlflow_run_id"]})
        stands_for(run_id)  # the best trial's model, logged again here with its test metrics
        model = tracking.load_run_model(best.user_attrs["mlflow_run_id"]).to(device)
        trial_seconds = tracking.get_run(best.user_attrs["mlflow_run_id"]).data.metrics.get("cost/train_seconds", float("nan"))
        values = log_classifier(model, data, device, trial_seconds, final_step=0)  # evaluated once, here
        tracking.log_metrics({"best/" + cfg.tune.metric: best.value})
        for fig_name, fig in optuna_study.figures(study).items():
            tracking.log_figure(fig, fig_name)
    say(f"tune: best trial {best.number} {cfg.tune.metric} {best.value:.4f} ({best.params}); "
         f"test macro-F1 {values['test/f1_macro']:.3f}")
    return StageResult(run_id, model, run_id)


def _safe_url(url: str) -> str:
    """The storage URL without its password, for tags and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
