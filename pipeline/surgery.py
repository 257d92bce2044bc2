"""Model surgery: find the regression head, swap it for a classification head, freeze, add dropout.

The head is found by running one forward pass with hooks: the last `nn.Linear` called whose output
becomes the model's output (through at most a reshape or an output activation module), wherever it
sits. `warm_start_head` builds a classification head from the regression head so that, before any
training, its argmax equals the regressor's output cut at the class edges. The ordinal heads
(`CumulativeLinkHead`, `CornHead`) know the classes are ordered bands of the target; the cumulative
link head starts from the regression head too, its median class exactly the cut regressor.

Every change is recorded in the model's recipe (`model.add_op`) so `build` can replay it on a freshly built base.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import UserError, first_line
from .model import MLP, add_op, construct, fold_ensemble, import_class, recipe, track

# modules that squash or clip a regressor's output; the new head must emit logits instead
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
               nn.Softmax, nn.LogSoftmax, nn.Softplus, nn.Hardtanh, nn.Hardsigmoid, nn.PReLU)


@dataclass
class Head:
    name: str                          # dotted module name of the regression head (nn.Linear, 1 output)
    in_features: int
    activation: str | None = None      # trailing output activation module, removed before the swap
    hidden_activations: list[str] = field(default_factory=list)  # activation modules the backbone calls

    def describe(self) -> str:
        act = f", then output activation '{self.activation}'" if self.activation else ""
        return f"'{self.name}' (Linear {self.in_features}->1{act})"


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor


def _probe(model: nn.Module, n_features: int) -> tuple[list[_Call], torch.Tensor]:
    """One eval-mode forward pass on random rows: every leaf module called, and every ordinal head (after
    its own Linear: a hook fires when the module returns), in order, and the output."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[_Call] = []

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            calls.append(_Call(names[module], module, first, output))

    leaves = [m for m in model.modules() if not list(m.children()) or _is_ordinal(m)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    device = next(model.parameters()).device
    x = torch.randn(4, n_features, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:  # the user's forward: a shape error here means the columns do not fit
        first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
        expects = f"; its first nn.Linear takes {first.in_features} features" if first is not None else ""
        raise UserError(f"the model does not accept {n_features} input features ({first_line(e)}){expects}: choose the "
                        "columns with --features a,b,c") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the model returns {type(out).__name__}, not a tensor; a regressor must return (N,) or (N, 1)")
    return calls, out


def _same(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """Equal up to a reshape/squeeze/flatten."""
    return a is not None and a.numel() == b.numel() and torch.equal(a.reshape(-1), b.reshape(-1))


def find_head(model: nn.Module, n_features: int, name: str | None = None, n_out: int = 1) -> Head:
    """The head: `name` if given, else the last nn.Linear or ordinal head whose output is the model's output.

    `n_out` is the head's width: 1 for a regressor (or a binary classifier), K for a classifier.
    An ordinal head (CumulativeLinkHead, CornHead) is found as a whole, not the Linear inside it.
    Raises UserError when the model's output is not (N,) or (N, 1) (resp. (N, K)), no such Linear
    exists, or the output passes through anything but a reshape or one activation module after it.
    """
    calls, out = _probe(model, n_features)
    n = 4
    if n_out == 1 and tuple(out.shape) not in ((n,), (n, 1)):
        raise UserError(f"the model's output has shape {tuple(out.shape)} for {n} rows; a regressor must output (N,) "
                        "or (N, 1)")
    if n_out > 1 and tuple(out.shape) != (n, n_out):
        raise UserError(f"the model's output has shape {tuple(out.shape)} for {n} rows; expected (N, {n_out})")
    if name:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"--head '{name}' is not a module of the model") from None
        if not (isinstance(module, nn.Linear) or _is_ordinal(module)):
            raise UserError(f"--head '{name}' is a {type(module).__name__}, not an nn.Linear")
        head_calls = [i for i, c in enumerate(calls) if c.module is module]
        if not head_calls:
            raise UserError(f"--head '{name}' is not called in the model's forward pass")
    else:
        head_calls = [i for i, c in enumerate(calls) if isinstance(c.module, nn.Linear) or _is_ordinal(c.module)]
        if not head_calls:
            raise UserError("no nn.Linear layer is called in the model's forward pass; name the head with --head")
    i = head_calls[-1]
    head = calls[i]
    if head.module.out_features != n_out:
        raise UserError(f"the head '{head.name}' has {head.module.out_features} outputs, expected {n_out} "
                        "(name another layer with --head)")
    activation = None
    if not _same(head.output, out):
        after = [c for c in calls[i + 1:] if isinstance(c.module, ACTIVATIONS)
                 and _same(c.input, head.output) and _same(c.output, out)]
        if not after:
            raise UserError(f"the model's output is not the output of its last nn.Linear '{head.name}': the forward "
                            "pass computes more after it (a functional activation such as torch.sigmoid?); make the "
                            "head's output the model's output, use an activation module, or name the head with --head")
        activation = after[-1].name
        if sum(c.module is after[-1].module for c in calls) > 1:
            raise UserError(f"the output activation '{activation}' is the same module as a hidden activation; "
                            "give the output its own module so it can be removed")
    hidden = []
    for c in calls[:i]:
        if isinstance(c.module, ACTIVATIONS) and c.name not in hidden:
            hidden.append(c.name)
    return Head(head.name, head.module.in_features, activation, hidden)


# ----------------------------------------------------------------------------------- swapping
def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and child.isdigit():
        parent[int(child)] = module
    else:
        setattr(parent, child, module)  # also nn.ModuleDict keys and plain attributes


def swap_head(model: nn.Module, name: str,
              new: nn.Linear | nn.Identity | OrdinalHead) -> nn.Module:
    """Replace the submodule `name` (dotted) by `new` in its parent, in place; returns the model."""
    device = next(model.parameters()).device
    _set_module(model, name, new.to(device))
    if isinstance(new, nn.Linear):
        add_op(model, {"op": "linear", "name": name, "in": new.in_features, "out": new.out_features,
                        "bias": new.bias is not None})
    elif isinstance(new, nn.Identity):
        add_op(model, {"op": "identity", "name": name})
    elif isinstance(new, OrdinalHead):
        op = "cumulative_link" if isinstance(new, CumulativeLinkHead) else "corn"
        add_op(model, {"op": op, "name": name, "in": new.in_features, "n_classes": new.n_classes})
    else:
        raise TypeError(f"swap_head takes nn.Linear, nn.Identity or an ordinal head, got {type(new).__name__}")
    return model


def add_dropout(model: nn.Module, head: Head, p_head: float, p_hidden: float) -> tuple[str, str | None]:
    """Dropout before the head, always; after each hidden activation module where there are some.

    Returns the head's new name and a warning when hidden dropout cannot be added (the forward pass
    uses functional activations, which have no module to follow).
    """
    _set_module(model, head.name, nn.Sequential(nn.Dropout(p_head), model.get_submodule(head.name)))
    for name in head.hidden_activations:
        _set_module(model, name, nn.Sequential(model.get_submodule(name), nn.Dropout(p_hidden)))
    add_op(model, {"op": "dropout", "head": head.name, "p_head": p_head, "hidden": list(head.hidden_activations),
                    "p_hidden": p_hidden})
    warning = None if head.hidden_activations else (
        "the model's forward pass uses functional activations: hidden dropout cannot be added; head dropout only")
    return f"{head.name}.1", warning


# ----------------------------------------------------------------------------------- slimming
def slim_width(model: nn.Module, head: Head, keep: float, n_features: int) -> nn.Module:
    """Keep `keep` of the hidden units of every hidden layer, in place; the head's outputs stay.

    Torch-Pruning's dependency graph removes each unit everywhere it is coupled: the rows of the
    Linear that makes it, the columns of every Linear that reads it, and a BatchNorm1d between them.
    Units are ranked by the L2 norm of all their coupled weights: data-free, deterministic, and on
    tables of a few hundred rows steadier than a gradient (Taylor) score from a handful of batches.
    """
    if keep >= 1.0:
        return model
    before = {name: _shapes(m) for name, m in model.named_modules()}
    base = recipe(model)["base"]
    head_module = model.get_submodule(head.name)
    linear = _head_linear(head_module)  # an ordinal head's Linear: the inputs it reads are pruned
    if base["kind"] == "mlp" and base["kwargs"].get("ensemble", 1) > 1:
        _slim_batch_ensemble(model, linear, keep)
    else:
        import torch_pruning as tp

        device = next(model.parameters()).device
        example = torch.randn(4, n_features, generator=torch.Generator().manual_seed(0)).to(device)  # for shapes
        # the pipeline MLP's feature embeddings stay whole: slimming is about hidden units
        ignored = [linear] + [m for m in [getattr(model, "embed", None)] if m is not None]
        # Torch-Pruning traces only the ordinal head's Linear in its place: the head's own arithmetic on its
        # outputs (concatenations, cumulative sums) holds no hidden unit and breaks its shape inference
        _set_module(model, head.name, linear)
        try:
            # quiet: it warns of parameters it leaves alone (the embeddings', a recurrent layer's) and prints
            # what it traced; whether the model could be slimmed is said once, by the slim stage
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                pruner = tp.pruner.MetaPruner(
                    model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                    pruning_ratio=1.0 - keep, ignored_layers=ignored)
                pruner.step()
        finally:
            _set_module(model, head.name, head_module)
    changed = {name: _shapes(m) for name, m in model.named_modules() if _shapes(m) != before.get(name)}
    add_op(model, {"op": "resize", "modules": changed})
    return model


def _slim_batch_ensemble(model: nn.Module, head: nn.Linear, keep: float) -> None:
    """slim_width for the pipeline's BatchEnsemble MLP, whose layers Torch-Pruning does not know. Hidden
    unit j of a layer is row j of its shared weight and column j of its members' output scalings and
    biases; what reads it (the next layer, or the head) holds it in column j of its weight (and of its
    members' input scalings). Units are ranked by the L2 norm of all of these, as slim_width does."""
    import tabm

    layers = [m for m in model.body if isinstance(m, tabm.LinearBatchEnsemble)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            reader = layers[i + 1] if i + 1 < len(layers) else head
            score = (layer.weight.pow(2).sum(1) + layer.s.pow(2).sum(0) + layer.bias.pow(2).sum(0)
                     + reader.weight.pow(2).sum(0))
            if reader is not head:
                score += reader.r.pow(2).sum(0)
            n = layer.out_features
            kept = score.topk(max(1, n - int(n * (1.0 - keep)))).indices.sort().values
            layer.weight = nn.Parameter(layer.weight[kept])
            layer.s, layer.bias = nn.Parameter(layer.s[:, kept]), nn.Parameter(layer.bias[:, kept])
            layer.out_features = len(kept)
            reader.weight = nn.Parameter(reader.weight[:, kept])
            reader.in_features = len(kept)
            if reader is not head:
                reader.r = nn.Parameter(reader.r[:, kept])


def _shapes(module: nn.Module) -> dict[str, list[int]]:
    """Shapes of a module's own parameters and buffers (not its children's)."""
    own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return {name: list(t.shape) for name, t in own if t is not None}


_SIZE_ATTRS = {"in_features": ("weight", 1), "out_features": ("weight", 0), "num_features": ("weight", 0),
               "num_parameters": ("weight", 0)}


def _resize(module: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Give a freshly built module the pruned shapes, in place: its type and settings (eps, momentum,
    activation slopes) stay; the state_dict loaded next fills the values."""
    for name, shape in shapes.items():
        current = getattr(module, name)
        if isinstance(current, nn.Parameter):
            setattr(module, name, nn.Parameter(current.new_empty(shape), requires_grad=current.requires_grad))
        else:
            module.register_buffer(name, current.new_empty(shape) if shape else current.clone())
    for attr, (param, dim) in _SIZE_ATTRS.items():
        if hasattr(module, attr) and param in shapes and len(shapes[param]) > dim:
            setattr(module, attr, shapes[param][dim])
    if isinstance(module, nn.BatchNorm1d) and "running_mean" in shapes:
        module.num_features = shapes["running_mean"][0]
    if isinstance(module, nn.LayerNorm) and "weight" in shapes:
        module.normalized_shape = tuple(shapes["weight"])


def drop_blocks(model: nn.Module, n: int) -> nn.Module:
    """Remove the last `n` hidden blocks of the pipeline's MLP (all hidden layers share one width, so
    the head reads the block before them unchanged), in place."""
    arch = recipe(model)
    depth = arch["base"]["kwargs"]["depth"] - sum(op["n"] for op in arch["ops"] if op["op"] == "drop_blocks")
    block = len(model.body) // depth
    model.body = model.body[:(depth - n) * block]
    add_op(model, {"op": "drop_blocks", "n": n})
    return model


def replay(model: nn.Module, op: dict) -> None:
    """Apply one recorded surgery op to a freshly built model (see `build`)."""
    if op["op"] == "resize":
        for name, shapes in op["modules"].items():
            _resize(model.get_submodule(name), shapes)
        add_op(model, op)
    elif op["op"] == "drop_blocks":
        drop_blocks(model, op["n"])
    elif op["op"] == "linear":
        swap_head(model, op["name"], nn.Linear(op["in"], op["out"], bias=op["bias"]))
    elif op["op"] == "identity":
        swap_head(model, op["name"], nn.Identity())
    elif op["op"] == "cumulative_link":
        swap_head(model, op["name"], CumulativeLinkHead(op["in"], op["n_classes"]))
    elif op["op"] == "corn":
        swap_head(model, op["name"], CornHead(op["in"], op["n_classes"]))
    elif op["op"] == "dropout":
        add_dropout(model, Head(op["head"], 0, None, op["hidden"]), op["p_head"], op["p_hidden"])
    else:
        raise ValueError(f"unknown surgery op {op['op']!r}")


def build(arch: dict, base_model: nn.Module | None = None) -> nn.Module:
    """Recreate a model from its recipe (`model.architecture()`): the base, then the recorded surgery, in order.

    `base_model` is the freshly loaded base for kinds that live outside the package (an MLflow URI).
    """
    base = arch["base"]
    if base["kind"] == "ensemble":  # the members, each by its own recipe (checkpoint.rebuild fetches URI bases)
        return fold_ensemble([build(member) for member in base["members"]], base["n_classes"], [])
    if base["kind"] == "mlp":
        model = MLP(**base["kwargs"])
    elif base["kind"] == "class":
        model = construct(import_class(base["spec"]), base["kwargs"])
    elif base_model is not None:
        model = base_model
    else:
        raise ValueError(f"cannot build a model of kind {base['kind']!r} without its base model")
    track(model, base)
    for op in arch["ops"]:
        replay(model, op)
    return model


def recorded_head(model: nn.Module) -> str | None:
    """The classification head's name from the recorded surgery: the last swapped-in Linear or ordinal
    head, inside the Sequential that add_dropout wrapped around it if it did."""
    name = None
    for op in recipe(model)["ops"]:
        if op["op"] in ("linear", "cumulative_link", "corn"):
            name = op["name"]
        elif op["op"] == "dropout" and op["head"] == name:
            name = f"{name}.1"
    return name


def set_dropout(model: nn.Module, head: Head, p_head: float, p_hidden: float) -> tuple[str, str | None]:
    """add_dropout, or on a model that has it already (a tuned model tuned again) new rates for it."""
    done = [op for op in recipe(model)["ops"] if op["op"] == "dropout"]
    if not done or head.name != f"{done[-1]['head']}.1":
        return add_dropout(model, head, p_head, p_hidden)
    op = done[-1]
    model.get_submodule(op["head"])[0].p = p_head
    for name in op["hidden"]:
        model.get_submodule(name)[1].p = p_hidden
    # the recipe replays the new rates: the recorded op (the live recipe's) is updated in place, not appended to
    op["p_head"], op["p_hidden"] = p_head, p_hidden
    return head.name, None


def new_head(in_features: int, n_classes: int) -> nn.Linear:
    """A randomly initialised classification head: K logits, or one logit when binary."""
    return nn.Linear(in_features, 1 if n_classes == 2 else n_classes)


def check_swap(model: nn.Module, before: dict[str, torch.Tensor], head_name: str, n_features: int,
               n_classes: int) -> None:
    """After a swap: the output is (N, K) ((N, 1) or (N,) when binary) and no backbone weight moved."""
    _, out = _probe(model, n_features)
    ok = {(4, 1), (4,)} if n_classes == 2 else {(4, n_classes)}
    if tuple(out.shape) not in ok:
        raise UserError(f"after the head swap the model outputs {tuple(out.shape)} for 4 rows, expected "
                        f"{' or '.join(map(str, sorted(ok)))}: its forward pass reshapes the head's output "
                        "(e.g. .view(-1))")
    now = model.state_dict()
    moved = [k for k, v in before.items()
             if not k.startswith(head_name + ".") and k in now and not torch.equal(v, now[k])]
    if moved:
        raise RuntimeError(f"head swap changed backbone weights {moved[:3]}")


def freeze_backbone(model: nn.Module, head_name: str) -> list[nn.Parameter]:
    """Freeze every parameter outside the head; returns the head's (trainable) parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    head_params = list(model.get_submodule(head_name).parameters())
    for p in head_params:
        p.requires_grad_(True)
    return head_params


def unfreeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


# --------------------------------------------------------------------------------- warm start
def edges_before_activation(activation: nn.Module | None, edges: np.ndarray) -> np.ndarray:
    """Class edges moved through the inverse of a monotone output activation, to the head's output.

    Cutting act(z) at e equals cutting z at act^-1(e), so warm_start still reproduces threshold.
    """
    if activation is None:
        return edges
    # the activation's open range of outputs; an edge outside it can't be moved back to the head
    ranges = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.Softplus: (0.0, np.inf), nn.ReLU: (0.0, np.inf),
              nn.ReLU6: (0.0, 6.0)}
    low, high = ranges.get(type(activation), (None, None))
    if low is not None and np.all(edges > low) and np.all(edges < high):
        if isinstance(activation, nn.Sigmoid):
            return np.log(edges / (1 - edges))
        if isinstance(activation, nn.Tanh):
            return np.arctanh(edges)
        if isinstance(activation, nn.Softplus) and activation.beta == 1 and activation.threshold >= 20:
            return np.log(np.expm1(edges))
        if isinstance(activation, (nn.ReLU, nn.ReLU6)):
            return edges
    raise UserError(f"warm_start cannot reproduce threshold through the output activation {type(activation).__name__} "
                    "with these class edges; leave threshold, warm_start and cumulative_link out of --strategies")


def _edge_offsets(edges: np.ndarray) -> torch.Tensor:
    """(K,) offsets sum_{j<k} e_j: 0, e_1, e_1+e_2, ... (edges in the head's output units)."""
    return torch.tensor(np.concatenate([[0.0], np.cumsum(edges)]), dtype=torch.float64)


def warm_start_logits(r: torch.Tensor, edges: np.ndarray, scale: float) -> torch.Tensor:
    """Logits that the warm-start head gives for regression outputs r (N,).

    logit_k = s * (k*r - sum_{j<k} e_j): neighbouring logits differ by s*(r - e_k), so the argmax is
    the number of edges below r, exactly the thresholded regressor (ties go to the lower class).
    Binary: one logit s * (r - t).
    """
    r = r.reshape(-1).double()
    if len(edges) == 1:
        return (scale * (r - float(edges[0]))).unsqueeze(1)
    k = torch.arange(len(edges) + 1, dtype=torch.float64)
    return scale * (r[:, None] * k - _edge_offsets(edges))


def fit_warm_start_scale(r: torch.Tensor, c: torch.Tensor, edges: np.ndarray) -> float:
    """The scale s > 0 minimising the log loss of warm_start_logits(r, edges, s) on (r, c).

    One-dimensional and convex in s, so a coarse log grid followed by a fine one is exact enough.
    """
    binary = len(edges) == 1

    def loss(s: float) -> float:
        logits = warm_start_logits(r, edges, s)
        if binary:
            return F.binary_cross_entropy_with_logits(logits.reshape(-1), c.double()).item()
        return F.cross_entropy(logits, c).item()

    return _best_scale(loss)


def _best_scale(loss) -> float:
    """The s > 0 minimising a one-dimensional loss(s): a coarse log grid, then a fine one around its best."""
    grid = np.logspace(-3, 4, 71)
    best = grid[int(np.argmin([loss(s) for s in grid]))]
    fine = np.linspace(best / 10 ** 0.1, best * 10 ** 0.1, 41)
    return float(fine[int(np.argmin([loss(s) for s in fine]))])


def warm_start_head(head: nn.Linear, edges: np.ndarray, scale: float) -> nn.Linear:
    """A classification head computed from the regression head `head` (out_features 1).

    With r = w.h + b: row k of the weight is s*k*w and bias_k = s*(k*b - sum_{j<k} e_j), so the new
    head's logits equal warm_start_logits(head(h), edges, scale) for every hidden vector h. The bias
    is computed as s*(k*(b-c) - sum_{j<k} (e_j-c)) with c a middle edge (the same value, as the c's
    cancel): for a regressor of large raw targets (b ~ 1e5) float32 would otherwise lose the cut.
    """
    w = head.weight.detach().double().reshape(-1)
    b = head.bias.detach().double().reshape(()) if head.bias is not None else torch.zeros((), dtype=torch.float64)
    n_out = 1 if len(edges) == 1 else len(edges) + 1
    out = nn.Linear(head.in_features, n_out).to(head.weight.device)
    with torch.no_grad():
        if n_out == 1:
            weight, bias = scale * w[None, :], (scale * (b - float(edges[0]))).reshape(1)
        else:
            k = torch.arange(n_out, dtype=torch.float64)
            c = float(edges[len(edges) // 2])
            weight = scale * k[:, None] * w[None, :]
            bias = scale * (k * (b - c) - _edge_offsets(edges - c))
        out.weight.copy_(weight.to(out.weight.dtype))
        out.bias.copy_(bias.to(out.bias.dtype))
    return out


# ------------------------------------------------------------------------------- ordinal heads
# The classes are bands of one continuous target, so they are ordered. An ordinal head replaces the
# regression head like any other, is marked `ordinal = True` (its decision is the median class, see
# decision.py) and outputs (N, K) log P(y = k): cross-entropy's log_softmax leaves normalised
# log-probabilities unchanged, so the pipeline's loss is exactly the model's negative log-likelihood and
# softmax gives P back. Binary: one logit, as every binary head in the pipeline.
class OrdinalHead(nn.Module):
    """What both ordinal heads share: the mark, the class count and an inner `linear` on the backbone's
    features, whose width the head reports (slim_width narrows that Linear)."""
    ordinal = True

    def __init__(self, in_features: int, n_classes: int, n_out: int):
        super().__init__()
        self.n_classes = n_classes
        self.linear = nn.Linear(in_features, n_out)

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return 1 if self.n_classes == 2 else self.n_classes


class CumulativeLinkHead(OrdinalHead):
    """Cumulative link (ordinal logistic) head on the regressor's own scalar output r:
    P(y <= k) = sigmoid((c_k - r) / s), with ordered cut points c_1 < ... < c_{K-1} and a scale s.

    The cuts are the first cut plus a cumulative softplus of the gaps (`raw_cuts`: the first cut, then
    softplus^-1 of each gap), so they stay ordered while they train. `linear` is the regression head;
    the median class, #{k : r > c_k}, is the regressor cut at the cuts for any s.
    """
    def __init__(self, in_features: int, n_classes: int):
        super().__init__(in_features, n_classes, 1)         # linear: r
        self.raw_cuts = nn.Parameter(torch.zeros(n_classes - 1))
        self.log_scale = nn.Parameter(torch.zeros(1))

    def cuts(self) -> torch.Tensor:
        """(K-1,) ordered cut points."""
        return torch.cumsum(torch.cat([self.raw_cuts[:1], F.softplus(self.raw_cuts[1:])]), 0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h: (N, in) -> (N, K) log-probabilities, or (N, 1) logit when binary
        return cumulative_link_log_proba(self.linear(h), self.cuts(), self.log_scale.exp())


def cumulative_link_log_proba(r: torch.Tensor, cuts: torch.Tensor, scale) -> torch.Tensor:
    """(N, K) log P(y = k) of the cumulative link model for r (N, 1), ordered cuts (K-1,), scale s > 0;
    binary: the (N, 1) logit (r - c) / s.

    log(F(a_k) - F(a_{k-1})) with F = sigmoid and a_k = (c_k - r) / s is computed as
    logsigmoid(a_k) + logsigmoid(-a_{k-1}) + log(1 - exp(-(a_k - a_{k-1}))): no difference of two
    probabilities that are both near 0 or 1, so no log(0) in the tails.
    """
    a = (cuts - r) / scale                                  # (N, K-1): logits of P(y <= k)
    if a.shape[1] == 1:
        return -a
    # the gaps from the cuts, not from a: (c_k - r) - (c_{k-1} - r) would lose them when |r| is large;
    # `tiny` keeps a gap that underflowed to 0 from giving log(0)
    gap = (torch.diff(cuts) / scale).clamp_min(torch.finfo(a.dtype).tiny)
    middle = F.logsigmoid(a[:, 1:]) + F.logsigmoid(-a[:, :-1]) + torch.log(-torch.expm1(-gap))
    return torch.cat([F.logsigmoid(a[:, :1]), middle, F.logsigmoid(-a[:, -1:])], 1)


def fit_cumulative_link_scale(r: torch.Tensor, c: torch.Tensor, edges: np.ndarray) -> float:
    """The scale s > 0 minimising the validation log loss of the cumulative link model with its cuts at
    `edges` (in r's units) on regressor outputs r (N,) and classes c: a 1-D fit, as for warm_start."""
    r = r.reshape(-1, 1).double()
    cuts = torch.from_numpy(np.asarray(edges, dtype=np.float64))

    def loss(s: float) -> float:
        out = cumulative_link_log_proba(r, cuts, s)
        if len(edges) == 1:
            return F.binary_cross_entropy_with_logits(out.reshape(-1), c.double()).item()
        return F.nll_loss(out, c).item()

    return _best_scale(loss)


def cumulative_link_head(head: nn.Linear, edges: np.ndarray, scale: float) -> CumulativeLinkHead:
    """A CumulativeLinkHead from the regression head `head` (out_features 1), its cuts at `edges` (in the
    head's output units) and scale `scale`: before any training its median class is the regressor's output
    cut at the edges, exactly `threshold`.

    The Linear keeps the regression weights; its bias and the cuts are both shifted by a middle edge m
    (r - m against c_k - m: the same comparisons), so float32 keeps the cut for a regressor of large raw
    targets (b ~ 1e5), as warm_start_head does.
    """
    edges = np.asarray(edges, dtype=np.float64)
    m = float(edges[len(edges) // 2])
    out = CumulativeLinkHead(head.in_features, len(edges) + 1).to(head.weight.device)
    b = head.bias.detach().double().reshape(()) if head.bias is not None else torch.zeros((), dtype=torch.float64)
    gaps = np.diff(edges)
    with torch.no_grad():
        out.linear.weight.copy_(head.weight.detach().reshape(1, -1))
        out.linear.bias.copy_((b - m).reshape(1).to(out.linear.bias.dtype))
        # softplus^-1(g) = log(expm1(g)), in float64 so the cuts land on the edges
        raw = np.concatenate([[edges[0] - m], np.log(np.expm1(gaps))])
        out.raw_cuts.copy_(torch.from_numpy(raw).to(out.raw_cuts.dtype))
        out.log_scale.fill_(float(np.log(scale)))
    return out


class CornHead(OrdinalHead):
    """CORN head (Shi, Cao and Raschka, 2021): K-1 conditional binary logits f_k on the backbone's
    features, f_k the logit of P(y > k | y >= k); randomly initialised, as in the paper.

    log P(y = k) = sum_{j<k} logsigmoid(f_j) + logsigmoid(-f_k) (last class: the sum of all
    logsigmoid(f_j)), so P(y > k) = prod_{j<=k} sigmoid(f_j) falls with k whatever the weights: the
    ranks are consistent. Cross-entropy on these log-probabilities is the CORN loss: for each k the
    binary cross-entropy of f_k against [y > k] on the rows with y >= k, summed. The paper averages each
    task over its own subset of rows; this sums over them and divides by the batch's rows, so every row
    weighs the same.
    """
    def __init__(self, in_features: int, n_classes: int):
        super().__init__(in_features, n_classes, n_classes - 1)  # linear: f

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h: (N, in) -> (N, K) log-probabilities, or (N, 1) logit when binary
        f = self.linear(h)                                   # (N, K-1)
        if f.shape[1] == 1:
            return f
        zero = torch.zeros_like(f[:, :1])  # not new_zeros(len(f), 1): torch.export keeps the batch dynamic
        reached = torch.cat([zero, torch.cumsum(F.logsigmoid(f), 1)], 1)   # log P(y >= k)
        stops = torch.cat([F.logsigmoid(-f), zero], 1)                     # log P(y = k | y >= k)
        return reached + stops


def _is_ordinal(module: nn.Module) -> bool:
    """An ordinal head: found, swapped and slimmed as one head."""
    return isinstance(module, OrdinalHead)


def _head_linear(module: nn.Module) -> nn.Linear:
    """The nn.Linear of a classification head: the head itself, or an ordinal head's `linear`."""
    return module.linear if _is_ordinal(module) else module
