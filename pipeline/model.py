"""Models: the pipeline's own MLP, and loading the regression model a user brings.

The MLP's backbone is `body` (Linear -> activation -> Dropout blocks) and its head a single
`nn.Linear`, so a regressor (head width 1) and a classifier (head width K, or 1 for binary) differ
only in `head`. A user's model comes as `file.py:Class` or `package.module:Class` plus JSON kwargs
and a state_dict checkpoint, loaded with `torch.load(weights_only=True)` only.

Every model in the pipeline carries one `Record`, the one home of what travels with it beside its layers:
- `recipe`: how it was built (`base`) and the surgery applied since (`ops`, appended by surgery.py through
  `add_op`); `track()` starts it, `architecture()` reads it. `surgery.build()` replays both, so a saved
  state_dict (`save_state` / `load_state`: the one on-disk form of a model, no pickle) can be loaded back
  into the right layers.
- `start`: the weights its training started from (`mark_start` / `start_of`: what a tuning trial retrains from),
  with `start_from`, the run whose logged weights hold part of it (so `save_state` does not store that part again;
  a loaded start reads it back from there when `start_of` is first asked).
- `rule`: its decision rule fitted on validation (decision.py), a plain dict (`set_rule` / `fitted_rule`).
Models flow through the stages as plain nn.Modules; the record rides on the module as one attribute, so
`copy.deepcopy` keeps it (fold ensembles, a slimmed student), and only the functions here read or write it.
`save_state` writes all three (architecture.json, weights.pt, rule.json) and `load_state` reads them back;
`portable` sends only the recipe and weights to a worker process.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import importlib.util
import inspect
import json
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import UserError, first_line, raised_at

ACTIVATION = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Module):
    """The pipeline's own regressor: [embed] -> body -> head.

    - `embedding` (none | periodic | piecewise): each feature becomes an `embedding_dim` vector
      (rtdl_num_embeddings; Gorishniy et al., 2022) before the body, which reads them flattened.
      Piecewise-linear embeddings need bin edges from the training features (`bins`, plain lists so
      the recipe rebuilds the same layers without data; stages/baseline.py computes them).
    - `ensemble` k > 1: BatchEnsemble (tabm's LinearBatchEnsemble, as in TabM; Gorishniy et al., 2024):
      the body runs k members at once, sharing each hidden layer's weight and keeping their own input
      and output scalings and biases; the members' features are averaged before the head. train.fit trains
      each member on its own loss (`member_outputs`), as TabM does, rather than the loss of their mean.
    """

    def __init__(self, in_dim: int, width: int = 64, depth: int = 2, out_dim: int = 1,
                 activation: str = "relu", dropout: float = 0.0, embedding: str = "none", embedding_dim: int = 16,
                 bins: list[list[float]] | None = None, ensemble: int = 1):
        super().__init__()
        self.embed = None
        d = in_dim
        if embedding != "none":
            import rtdl_num_embeddings as rtdl  # imported only when used: a plain MLP needs neither package

            if embedding == "periodic":
                self.embed = rtdl.PeriodicEmbeddings(in_dim, embedding_dim, lite=False)
            elif embedding == "piecewise":
                if not bins or len(bins) != in_dim:
                    raise ValueError(f"piecewise embedding needs bin edges for each of the {in_dim} features")
                with warnings.catch_warnings():  # a one-hot column has a single bin: fine, no need to say so
                    warnings.filterwarnings("ignore", "The .* feature has just two bin edges")
                    self.embed = rtdl.PiecewiseLinearEmbeddings([torch.tensor(b) for b in bins], embedding_dim,
                                                                activation=False, version="B")
            else:
                raise ValueError(f"unknown embedding {embedding!r}")
            d = in_dim * embedding_dim
        self.ensemble = ensemble
        layers: list[nn.Module] = []
        for i in range(depth):
            d_in = d if i == 0 else width
            if ensemble == 1:
                linear = nn.Linear(d_in, width)
            else:
                import tabm

                # TabM's initialisation: random signs for the first input scaling (one sign per feature's
                # embedding), ones for every other scaling, so the members differ from the first step
                linear = tabm.LinearBatchEnsemble(
                    d_in, width, k=ensemble, scaling_init=("random-signs", "ones") if i == 0 else "ones",
                    first_scaling_init_chunks=[embedding_dim] * in_dim if i == 0 and self.embed is not None else None)
            layers += [linear, ACTIVATION[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)
        kwargs = dict(in_dim=in_dim, width=width, depth=depth, out_dim=out_dim, activation=activation, dropout=dropout)
        if embedding != "none":  # recorded only when used: a plain MLP's recipe stays what it was
            kwargs.update(embedding=embedding, embedding_dim=embedding_dim)
            if bins is not None:
                kwargs["bins"] = [[float(v) for v in b] for b in bins]
        if ensemble != 1:
            kwargs["ensemble"] = ensemble
        track(self, {"kind": "mlp", "kwargs": kwargs})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in_dim) -> (N, out_dim); no output activation: losses take raw values / logits
        if self.embed is not None:
            x = self.embed(x).flatten(1)  # (N, in_dim, embedding_dim) -> (N, in_dim * embedding_dim)
        if self.ensemble == 1:
            return self.head(self.body(x))
        x = x.unsqueeze(1).expand(-1, self.ensemble, -1)  # (N, k, d): the same row for each member
        # (N, k, width) -> (N, width). The shared linear head on the members' mean feature equals the mean of
        # the members' linear predictions, so the head stays one nn.Linear that head-swap surgery replaces.
        return self.head(self.body(x).mean(1))

    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, k, out_dim): each ensemble member's own output, what each member's loss is computed
        on in training (train.batch_loss). For a linear head forward() is their mean; an ordinal head (surgery)
        reads the members' mean feature there, so forward() stays the head's own output."""
        if self.embed is not None:
            x = self.embed(x).flatten(1)
        h = self.body(x.unsqueeze(1).expand(-1, self.ensemble, -1))  # (N, k, width)
        return self.head(h.reshape(-1, h.shape[-1])).reshape(h.shape[0], h.shape[1], -1)


SMALL_TABLE_ROWS = 500  # training rows below which the auto width is 64 (mlp_width)


def mlp_width(width: int, train_rows: int) -> int:
    """`model.width`, or for 0 (auto): 64 below 500 training rows, 256 up to 100,000, 64 above (the CLI resolves
    it once, from the first split: cli._resolve_width). Chosen on validation (docs/benchmarks.md, "The auto width
    on small tables"):
    - below 500 rows (the built-in data's folds train on 286, penguins' on about 220) 64 units tie 256: over three
      seeds of the whole convert on both tables the network rows' validation macro-F1 differ by +0.001 on average
      (38 of 72 rows higher at 64), the regressor's validation RMSE is within 0.6% either way, and the store keeps
      a fifth of the bytes (4 MB against 22 MB a convert): among equals, the smaller. (256 had been chosen on one
      selection-biased figure, the built-in data's champion validation macro-F1, 0.652 vs 0.642.)
    - from 500 rows 256 units: clearly better on wine (champion validation macro-F1 0.800 vs 0.783, 5 folds,
      bench_quality.py's validation column) and on friedman1's regressor at 560 training rows (validation RMSE
      1.41 vs 1.50); a tie on diamonds (0.963 vs 0.962);
    - at 100,000 rows 256 costs about three times the time (docs/benchmarks.md), which would take a
      1,000,000-row convert far past 15 minutes, so large tables keep 64."""
    if width:
        return width
    return 256 if SMALL_TABLE_ROWS <= train_rows < 100_000 else 64


# ------------------------------------------------------------------------------ the user's model
def import_class(spec: str):
    """`path/to/file.py:Name` or `package.module:Name` -> what builds the model: an nn.Module class, or a
    function that returns an nn.Module (for a model whose constructor takes what JSON cannot spell, such as a
    config object: the function builds that from plain keyword arguments)."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"model file {path} not found (--model path/to/file.py:ClassName)")
        # a stable module name per file, so a rebuilt model's class is the same object
        module_name = "reg2cls_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            # registered like any imported module: dataclasses and typing look it up while it runs
            sys.modules[module_name] = module
            # the file may import its neighbours, as it does where it lives: its folder is on the path
            # while it executes, and only then
            folder = str(path.resolve().parent)
            sys.path.insert(0, folder)
            try:
                loader_spec.loader.exec_module(module)
            except (Exception, SystemExit) as e:  # the user's code: any error, or an exit, means "cannot import"
                del sys.modules[module_name]
                raise UserError(f"cannot import {path}: {type(e).__name__}: {first_line(e)} ({raised_at(e)})") \
                    from None
            finally:
                sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise UserError(f"cannot import module '{target}': {type(e).__name__}: {first_line(e)}") from None
    cls = getattr(module, name, None)
    if not ((isinstance(cls, type) and issubclass(cls, nn.Module)) or inspect.isfunction(cls)):
        found = sorted(n for n, v in vars(module).items() if getattr(v, "__module__", None) == module.__name__
                       and ((isinstance(v, type) and issubclass(v, nn.Module)) or inspect.isfunction(v)))
        raise UserError(f"class '{name}' not found in {target} (nn.Module classes and functions there: "
                        f"{', '.join(found) or 'none'})")
    return cls


def construct(cls, kwargs_json: str) -> nn.Module:
    """`cls(**kwargs)`: an nn.Module class, or a function returning one (import_class), called with the JSON
    object `kwargs_json`."""
    try:
        kwargs = json.loads(kwargs_json or "{}")
    except json.JSONDecodeError as e:
        raise UserError(f"--model-kwargs is not valid JSON ({e.msg} at character {e.pos}): {kwargs_json}") from None
    except RecursionError:
        raise UserError("--model-kwargs is nested too deeply; pass a flat JSON object") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"--model-kwargs must be a JSON object like '{{\"hidden_dim\": 50}}', got {kwargs_json}")
    try:
        model = cls(**kwargs)
    except TypeError as e:
        raise UserError(f"{cls.__name__}{inspect.signature(cls)} rejected --model-kwargs {kwargs_json}: {e}") from None
    except Exception as e:  # the user's own __init__ failed: name it, with its message, not our traceback
        raise UserError(f"{cls.__name__}(**{kwargs_json}) raised {type(e).__name__}: {first_line(e)}; "
                        "fix the model's __init__ or --model-kwargs") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{cls.__name__}(**{kwargs_json}) returned {type(model).__name__}, not an nn.Module; "
                        "a --model function must return the model")
    return model


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state_dict saved with torch.save into `model`, strictly: every key, every shape."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} not found")
    _check_inflated_size(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"checkpoint {path} refused: it holds more than tensors and would need full pickle to load, "
                        "which can run code from the file; save only the weights: "
                        "torch.save(model.state_dict(), path)") from None
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}: {first_line(e)}); "
                        "save it with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model_state_dict"):  # {"state_dict": ..., "epoch": ...}, the tutorials' form
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} is not a state_dict (a dict of tensors); "
                        "save it with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    for prefix in ("module.", "model."):  # saved from DataParallel or a Lightning module
        if state and own.keys() - state.keys() and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if stripped.keys() == own.keys():
                state = stripped
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit {type(model).__name__}: missing keys {_few(missing)}; "
                        f"unexpected keys {_few(unexpected)}; check --model and --model-kwargs")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise UserError(f"checkpoint {path} does not fit {type(model).__name__}: shapes (checkpoint vs model) "
                        f"{_few(wrong)}; check --model-kwargs")
    model.load_state_dict(state)


def _check_inflated_size(path: str) -> None:
    """Refuse a checkpoint whose zip archive declares far more content than the file holds, before torch.load
    inflates it (a zip bomb: 4 MB on disk, gigabytes in memory). torch.save stores its records uncompressed,
    so a real checkpoint declares about its own size."""
    import zipfile

    size = Path(path).stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # the legacy format, or no archive: torch.load judges it
        return
    if declared > 2 * size + 2**26:
        raise UserError(f"checkpoint {path} declares {declared / 2**20:,.0f} MB of content in a {size / 2**20:,.1f} MB "
                        "file (compressed, which torch.save never does): refused unread; save the weights with "
                        "torch.save(model.state_dict(), path)")


def load_user_model(spec: str, kwargs_json: str, checkpoint: str) -> nn.Module:
    """The user's class built with its kwargs; weights from `checkpoint` when given."""
    model = construct(import_class(spec), kwargs_json)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return track(model, {"kind": "class", "spec": spec, "kwargs": kwargs_json})


def _few(items: list[str], n: int = 6) -> str:
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# ----------------------------------------------------------------------------- architecture
class FoldEnsemble(nn.Module):
    """What ships after cross-fitting: the champion row's model of every outer fold, averaged. Each member's
    raw output becomes its tempered class probabilities (its own rule's temperature, kept as a buffer); the
    ensemble outputs the log of their mean, which its own decision rule (stages.champion fits it) decides on.
    Together the members saw every row; each alone saw its fold's training rows only."""

    def __init__(self, members: list[nn.Module], n_classes: int, temperatures: list[float] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.n_classes = n_classes
        self.register_buffer("temperatures", torch.tensor(temperatures or [1.0] * len(members)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = []
        for member, t in zip(self.members, self.temperatures):
            out = member(x).reshape(len(x), -1)
            if self.n_classes == 2 and out.shape[1] == 1:  # one binary logit z: the scores [0, z]
                out = torch.cat([torch.zeros_like(out), out], dim=1)
            log_p.append(torch.log_softmax(out / t, dim=1))
        return torch.logsumexp(torch.stack(log_p), dim=0) - torch.log(torch.tensor(float(len(log_p))))


def fold_ensemble(members: list[nn.Module], n_classes: int, temperatures: list[float]) -> FoldEnsemble:
    """The members averaged, with a recipe that rebuilds it (each member's recipe inside its own)."""
    ensemble = FoldEnsemble(members, n_classes, temperatures)
    return track(ensemble, {"kind": "ensemble", "n_classes": n_classes,
                            "members": [architecture(m) for m in members]})


@dataclass
class Record:
    """What a model carries beside its layers (see the module's docstring)."""
    recipe: dict                                  # {"base": how it was built, "ops": the surgery since}
    start: dict[str, torch.Tensor] | None = None  # the weights its training started from, on the CPU
    rule: dict | None = None                      # its decision rule (decision.py), fitted on validation
    start_from: dict | None = None                # {"run", "keys"}: the start's tensors another run's weights hold
    read_run: Callable[[str], dict] | None = None  # a loaded start: reads those (`start_of`, when first asked)


RECORD = "reg2cls_record"  # the one attribute a model carries its Record in (only this module names it)


def track(model: nn.Module, base: dict) -> nn.Module:
    """Give `model` its record, with its recipe started: how its base was built, no surgery yet. Every way a
    model enters the pipeline (the MLP, a user's class, an MLflow URI, `build`) goes through here."""
    setattr(model, RECORD, Record({"base": copy.deepcopy(base), "ops": []}))
    return model


def record_of(model: nn.Module) -> Record:
    """`model`'s live record (not a copy: surgery, `mark_start` and `set_rule` write to it)."""
    record = getattr(model, RECORD, None)
    if record is None:  # a bare nn.Module: surgery on it could never be replayed, so refuse loudly
        raise ValueError(f"{type(model).__name__} has no recipe: build it with MLP, load_user_model or model.track")
    return record


def recipe(model: nn.Module) -> dict:
    """`model`'s live recipe (not a copy: surgery edits it)."""
    return record_of(model).recipe


def add_op(model: nn.Module, op: dict) -> None:
    """Append one surgery op to `model`'s recipe (surgery.py calls this for every change it makes)."""
    recipe(model)["ops"].append(op)


def architecture(model: nn.Module) -> dict:
    """What `build` needs to recreate `model`'s layers (weights travel separately)."""
    return copy.deepcopy(recipe(model))


def portable(model: nn.Module) -> tuple[dict, dict]:
    """`model` as it travels to a worker process: its recipe and its weights on the CPU (the recipe, not the
    module: a brought model's class may not unpickle there). `checkpoint.rebuild(*portable(model))` recreates it."""
    return architecture(model), {k: v.cpu() for k, v in model.state_dict().items()}


def mark_start(model: nn.Module, shared_with: tuple[str, dict] | None = None) -> None:
    """Remember `model`'s current weights as its starting point, just before its training: a tuning trial
    retrains from there (with other hyperparameters) rather than continuing from converged weights.
    `shared_with`: (run id, the weights that run logged), when the start was made from them (a head-swap
    classifier from its baseline's regressor): the tensors equal to that run's are then not saved again."""
    record = record_of(model)
    record.start = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    record.start_from = None
    if shared_with is not None:
        run, weights = shared_with
        keys = sorted(k for k, v in record.start.items() if k in weights and torch.equal(v, weights[k].cpu()))
        record.start_from = {"run": run, "keys": keys} if keys else None


def start_of(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """`model`'s starting point (`mark_start`), or None when none was marked. A loaded start's tensors that its
    `start_from` run holds are read from that run here, on first use: serving or exporting the model never needs it."""
    record = record_of(model)
    pending = [k for k in record.start_from["keys"] if k not in record.start] if record.start_from else []
    if pending:
        shared = record.read_run(record.start_from["run"])
        record.start.update({k: shared[k] for k in pending})
    return record.start


def set_rule(model: nn.Module, rule: dict) -> dict:
    """Attach the decision rule `rule` (decision.py) to `model`; returns it."""
    record_of(model).rule = rule
    return rule


def fitted_rule(model: nn.Module) -> dict | None:
    """`model`'s decision rule, or None: none fitted yet, or a bare nn.Module (decision.rule_of then decides by
    the identity rule)."""
    record = getattr(model, RECORD, None)
    return record.rule if record is not None else None


def save_state(model: nn.Module, folder: Path, with_start: bool = True) -> int:
    """Write `weights.pt` and `architecture.json` into `folder`, with `rule.json` when the model has a decision
    rule; returns the size in bytes of the model's weights alone (its state_dict as torch.save writes it).

    `weights.pt` is the one weights file: the state_dict on the CPU, and when the model has a starting point
    (`mark_start`) and `with_start`, {"weights": state_dict, "start": the start's tensors, "start_from": ...}
    instead. The start keeps only the tensors found nowhere else: not those equal to the weights (a frozen
    backbone, a head that never moved) nor those its `start_from` run's weights hold (a fine-tune's backbone
    started as its baseline's: `load_state` reads them from there). A served model (`with_start=False`) needs
    no start."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    record = record_of(model)
    if record.start is None or not with_start:
        (folder / "weights.pt").write_bytes(buffer.getvalue())
    else:
        elsewhere = set(record.start_from["keys"]) if record.start_from else set()
        moved = {k: v for k, v in record.start.items()
                 if k not in elsewhere and (k not in weights or not torch.equal(v, weights[k]))}
        torch.save({"weights": weights, "start": moved, "start_from": record.start_from or {}}, folder / "weights.pt")
    (folder / "architecture.json").write_text(json.dumps(architecture(model), indent=1))
    if record.rule is not None:
        (folder / "rule.json").write_text(json.dumps(record.rule, indent=1))
    return buffer.getbuffer().nbytes


def read_weights(file) -> tuple[dict, dict | None, dict | None]:
    """What `save_state` wrote to `weights.pt` (a path or a file object), loaded with `weights_only=True`:
    (the state_dict, the start's kept tensors, `start_from`); the last two None when it saved no start."""
    saved = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(saved.get("weights"), dict):  # a plain state_dict holds tensors only
        return saved, None, None
    return saved["weights"], saved["start"], saved.get("start_from") or None


def load_state(folder: Path, build_model, run_weights=None) -> nn.Module:
    """The model `save_state` wrote: `build_model(architecture)` makes the layers (checkpoint.rebuild,
    which can fetch a base model from MLflow), the weights load with `weights_only=True`. `run_weights(run id)`:
    the weights another run logged, for a start that shares tensors with them (checkpoint.run_weights), called by
    `start_of` when the start is first asked for."""
    model = build_model(json.loads((folder / "architecture.json").read_text()))
    saved, moved, start_from = read_weights(folder / "weights.pt")
    record = record_of(model)
    if moved is not None:
        elsewhere = set(start_from["keys"]) if start_from else set()
        # a tensor the start does not keep is the weight's (it never moved), or the start_from run's (start_of)
        record.start = {k: moved.get(k, v) for k, v in saved.items() if k not in elsewhere}
        record.start_from, record.read_run = start_from, run_weights
    model.load_state_dict(saved)
    if (folder / "rule.json").is_file():
        record.rule = json.loads((folder / "rule.json").read_text())
    return model.eval()


def requirements(model: nn.Module) -> list[str]:
    """The packages beyond torch that rebuilding `model` from its recipe imports, pinned to the versions here
    (what a registered champion must install to load elsewhere)."""
    from importlib.metadata import version

    base = recipe(model)["base"]
    if base["kind"] == "ensemble":
        return sorted({r for member in model.members for r in requirements(member)})
    kwargs = base.get("kwargs", {}) if base["kind"] == "mlp" else {}
    packages = (["rtdl_num_embeddings"] if kwargs.get("embedding", "none") != "none" else []) + (
        ["tabm"] if kwargs.get("ensemble", 1) != 1 else [])
    return [f"{name}=={version(name)}" for name in packages]


def model_file(model: nn.Module) -> Path | None:
    """The file a model brought as `path/to/file.py:Class` was imported from (what a champion must carry to
    load elsewhere), or None for the pipeline's MLP, a `package.module:Class` or an MLflow URI base."""
    base = recipe(model)["base"]
    if base["kind"] == "ensemble":  # every member is the same brought class
        return model_file(model.members[0])
    if base["kind"] != "class":
        return None
    target = base["spec"].rpartition(":")[0]
    if not (target.endswith(".py") or "/" in target):
        return None
    source = inspect.getsourcefile(type(model)) if type(model).__module__.startswith("reg2cls_user_") else None
    path = Path(source or target)
    return path.resolve() if path.is_file() else None


def local_imports(path: Path) -> list[Path]:
    """The user's own code that the model file `path` imports, directly or through each other: the modules and
    packages in its folder (where `import_class` lets it import from), as paths relative to that folder, every
    `.py` file of an imported package included. Found by reading the files (`ast`), not by running them, so a
    champion carries what its model file needs to import wherever it loads."""
    root = path.parent
    found: set[Path] = set()
    todo, read = [path], set()
    while todo:
        current = todo.pop()
        if current in read:
            continue
        read.add(current)
        try:
            tree = ast.parse(current.read_text())
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue  # relative imports stay inside a package, which travels whole
            for top in {name.split(".")[0] for name in names}:
                if (root / f"{top}.py").is_file():
                    files = [root / f"{top}.py"]
                elif (root / top).is_dir():
                    files = sorted((root / top).rglob("*.py"))
                else:
                    continue  # an installed package (torch, numpy) or the standard library
                for f in files:
                    if f != path and f.resolve() not in found:
                        found.add(f.resolve())
                        todo.append(f)
    return sorted(f.relative_to(root.resolve()) for f in found)


def relocated(arch: dict, folder: Path) -> dict:
    """`arch` with its model file looked for in `folder` (where a champion's copy of it was unpacked)."""
    base = arch["base"]
    if base["kind"] == "ensemble":
        return {**arch, "base": {**base, "members": [relocated(m, folder) for m in base["members"]]}}
    if base["kind"] == "class":
        target, _, name = base["spec"].rpartition(":")
        if (folder / Path(target).name).is_file():
            arch = {**arch, "base": {**base, "spec": f"{folder / Path(target).name}:{name}"}}
    return arch

