"""Per-chip fine-tuning of the deployed network's thresholds: the strong competitor to cimcal.

What the published follow-up (2023: per-chip parameter adjustment of the deployed binary network)
does, made as strong as we could: the weights stay, every binary channel's threshold (its folded
batch-norm shift) is learned per die by gradient descent on the task, through a differentiable
surrogate of the die fitted from the die's own reads of the calibration set, with the die in the
loop between rounds.

One round:

1. **Measure** (:func:`measure_pass`): run the calibration clips through the die macro by macro
   (``readout`` is the die's ``read_macro``); the host does the digital layers and applies the
   current thresholds, so every tile is read on the activations the die itself produces. The pass
   also gives the die's logits, hence its calibration accuracy at the current thresholds.
2. **Fit** (:func:`fit_surrogate`): every column of every tile as ``code = a + b * partial sum``,
   a least-squares fit of its measured codes against the ideal partial sums of the same inputs,
   weighted towards the channel's decision boundary (where non-linearity matters), rail codes left
   out; the residual spread is its noise. The copies of a row tile add their gains and offsets.
3. **Train** (:func:`train_thresholds`): the network with every binary layer replaced by its
   surrogate, ``P(fire) = Phi((sum_rt G_rt * s_rt + A - theta + 1/2) / sigma)``, is differentiable
   in the thresholds ``theta``; Adam minimises the cross-entropy on the calibration labels plus a
   distillation term towards the ideal chip's logits (hard decisions forward, the relaxation's
   gradient back: the straight-through estimator of binary-network training), and keeps the
   thresholds whose hard decisions score best on the calibration set.

Nothing here touches a driver or the simulator: the die is only the ``readout`` callable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from hardware.chip import LayerSpec, NetworkProgram, Readout, WeightImage, execute_network

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


@dataclass(frozen=True)
class FinetuneConfig:
    """Knobs of the fine-tuning (defaults: the benchmark's setting).

    steps           : Adam steps per round
    batch           : clips per step
    lr_code         : Adam learning rate, ADC codes
    temperature_code: added to the fitted noise of every channel (codes), so a gradient reaches
                      channels whose fitted noise is tiny; it anneals from ``temperature_start_code``
    kd_weight       : weight of the distillation term (KL to the ideal chip's softened logits)
    kd_temperature  : softening temperature of that term
    fit_samples     : patches per layer used for the surrogate fit (a random subset)
    eval_every      : steps between evaluations of the surrogate's hard accuracy on the whole set;
                      the thresholds returned are the best evaluated (the start included)
    """

    steps: int = 80
    batch: int = 32
    lr_code: float = 0.3
    temperature_code: float = 0.5
    temperature_start_code: float = 3.0
    kd_weight: float = 1.0
    kd_temperature: float = 2.0
    fit_samples: int = 20000
    eval_every: int = 20


@dataclass
class DiePass:
    """One pass of clips through the die: the logits, and per binary layer the input patches
    (n, K) uint8 and the codes each tile's macro returned (n, phys_cols) int16."""

    logits: F32
    patches: dict[str, NDArray[np.uint8]] = field(default_factory=dict)
    codes: dict[int, NDArray[np.int16]] = field(default_factory=dict)


def measure_pass(
    image: WeightImage,
    features: F32,
    readout: Readout,
    *,
    rng: np.random.Generator,
    keep: int = 20000,
) -> DiePass:
    """Run ``features`` (N, C, H, W) through ``image`` with ``readout``; keep up to ``keep`` random
    patches per layer and the matching codes (for the surrogate fit)."""
    out = DiePass(logits=np.zeros((0, 0), np.float32))
    picks: dict[str, NDArray[np.int64]] = {}
    macro_layer = {t.macro: t.layer for t in image.tiles}

    def tap(name: str, patches: NDArray[np.uint8]) -> None:
        n = patches.shape[0]
        pick = np.sort(rng.choice(n, size=keep, replace=False)) if n > keep else np.arange(n)
        picks[name] = pick
        out.patches[name] = patches[pick]

    def read(macro: int, inputs: NDArray[np.uint8]) -> NDArray[np.int16]:
        codes = readout(macro, inputs)
        out.codes[macro] = codes[picks[macro_layer[macro]]]
        return codes

    out.logits = execute_network(image, features, read, tap=tap)
    return out


@dataclass(frozen=True)
class LayerSurrogate:
    """One binary layer as the die behaves: summed code ``= patches @ (W * G) + A``, noise ``sigma``.

    eff_weight : (K, Cout) float32, the weight matrix times the summed gain of each row's tile copies
    offset     : (Cout,) float64, summed offset of every tile of the channel (codes)
    sigma      : (Cout,) float64, spread of the summed code around the linear model (codes)
    threshold  : (Cout,) int32, the ideal boundary mapped through the model (the die-fitted
                 two-point trim): where training starts
    """

    eff_weight: F32
    offset: F64
    sigma: F64
    threshold: NDArray[np.int32]


def _tile_fit(s: F64, y: F64, w: F64) -> tuple[F64, F64, F64]:
    """Weighted least squares ``y = a + b s`` per column of (n, nc) arrays; returns a, b, sigma."""
    sw = np.maximum(w.sum(axis=0), 1e-9)
    ms = (w * s).sum(axis=0) / sw
    my = (w * y).sum(axis=0) / sw
    ds, dy = s - ms, y - my
    vs = (w * ds * ds).sum(axis=0)
    b = np.where(vs > 1e-9, (w * ds * dy).sum(axis=0) / np.maximum(vs, 1e-9), 0.0)
    a = my - b * ms
    resid = y - a - b * s
    sigma = np.sqrt((w * resid * resid).sum(axis=0) / sw)
    return a, b, sigma


def fit_surrogate(
    image: WeightImage, program: NetworkProgram, die_pass: DiePass
) -> dict[str, LayerSurrogate]:
    """Every binary layer's :class:`LayerSurrogate` from the codes of ``die_pass``."""
    g = image.geometry
    out: dict[str, LayerSurrogate] = {}
    for layer in program.binary_layers():
        wm = layer.weight_matrix().astype(np.float32)  # (K, Cout)
        thr = np.asarray(layer.arrays["threshold"], dtype=np.float64)
        patches = die_pass.patches[layer.name].astype(np.float32)
        gain_rows = np.zeros(wm.shape, np.float64)  # (K, Cout): summed gain of the copies of each row
        offset = np.zeros(layer.n_out)
        var = np.zeros(layer.n_out)
        boundary = np.zeros(layer.n_out)
        for t in (t for t in image.tiles if t.layer == layer.name):
            rows = slice(t.row_start, t.row_start + t.n_rows)
            cols = slice(t.col_start, t.col_start + t.n_cols)
            s = (patches[:, rows] @ wm[rows, cols]).astype(np.float64)  # (n, nc) ideal partial sums
            y = die_pass.codes[t.macro][:, image.col_map[t.macro, : t.n_cols]].astype(np.float64)
            at_boundary = (thr[cols] - 0.5) * t.n_rows / layer.n_rows
            width = np.maximum(4.0, s.std(axis=0))
            w = np.exp(-0.5 * ((s - at_boundary) / width) ** 2)
            w = np.where((y <= g.code_min) | (y >= g.code_max), 0.0, w)
            a, b, sigma = _tile_fit(s, y, w)
            gain_rows[rows, cols] += b[None, :]
            offset[cols] += a
            var[cols] += sigma**2
            boundary[cols] += a + b * at_boundary
        out[layer.name] = LayerSurrogate(
            eff_weight=(wm * gain_rows).astype(np.float32),
            offset=offset,
            sigma=np.sqrt(var),
            threshold=(np.floor(boundary) + 1).astype(np.int32),
        )
    return out


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    assert isinstance(v, list | tuple)
    return (int(v[0]), int(v[1]))


def _digital_prefix(program: NetworkProgram, features: F32) -> tuple[torch.Tensor, int]:
    """The (exact, binary) input of the first binary layer, and that layer's index."""
    ideal = program.binary_layers()[0]
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    for i, layer in enumerate(program.layers):
        if layer.name == ideal.name:
            return x, i
        x = _digital(layer, x)
    raise ValueError("the program has no binary layer")


def _digital(layer: LayerSpec, x: torch.Tensor) -> torch.Tensor:
    a = layer.attrs
    if layer.kind == "conv_digital":
        out = F.conv2d(
            x,
            torch.from_numpy(np.asarray(layer.arrays["weight"], dtype=np.float32)),
            torch.from_numpy(np.asarray(layer.arrays["bias"], dtype=np.float32)),
            stride=_pair(a.get("stride", 1)),
            padding=_pair(a.get("padding", 0)),
        )
        return (out >= 0).to(torch.float32)
    if layer.kind == "maxpool":
        return F.max_pool2d(x, _pair(a.get("kernel", 2)))
    if layer.kind == "avgpool_global":
        return x.mean(dim=(2, 3))
    if layer.kind == "flatten":
        return x.reshape(x.shape[0], -1)
    if layer.kind == "dense_digital":
        w = torch.from_numpy(np.asarray(layer.arrays["weight"], dtype=np.float32))
        b = torch.from_numpy(np.asarray(layer.arrays["bias"], dtype=np.float32))
        return x.reshape(x.shape[0], -1) @ w.T + b
    raise ValueError(f"layer {layer.name}: {layer.kind} is not a digital layer")


class _SoftNetwork:
    """The surrogate network, differentiable in the thresholds of its binary layers."""

    def __init__(self, program: NetworkProgram, surrogate: Mapping[str, LayerSurrogate]) -> None:
        self.program = program
        self.weight = {k: torch.from_numpy(v.eff_weight) for k, v in surrogate.items()}
        self.offset = {k: torch.from_numpy(v.offset.astype(np.float32)) for k, v in surrogate.items()}
        self.noise_var = {k: torch.from_numpy((v.sigma**2).astype(np.float32)) for k, v in surrogate.items()}
        self.temperature = 1.0
        self.straight_through = True

    def spread(self, name: str) -> torch.Tensor:
        return torch.sqrt(self.noise_var[name] + self.temperature**2)

    def sums(self, layer: LayerSpec, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The surrogate's mean summed codes of ``layer`` for its input ``x``: (N, L, C) and (Ho, Wo)."""
        if layer.kind != "conv_binary":
            return (x.reshape(x.shape[0], -1) @ self.weight[layer.name] + self.offset[layer.name]), (1, 1)
        kh, kw = layer.weight_shape[2:]
        pad, stride = _pair(layer.attrs.get("padding", 0)), _pair(layer.attrs.get("stride", 1))
        ho = (x.shape[2] + 2 * pad[0] - kh) // stride[0] + 1
        wo = (x.shape[3] + 2 * pad[1] - kw) // stride[1] + 1
        cols = F.unfold(x, (kh, kw), padding=pad, stride=stride)  # (N, K, L)
        return cols.transpose(1, 2) @ self.weight[layer.name] + self.offset[layer.name], (ho, wo)

    def forward(
        self, x: torch.Tensor, start: int, theta: Mapping[str, torch.Tensor], first_sums: torch.Tensor
    ) -> torch.Tensor:
        """Logits from the input ``x`` of layer ``start`` (the first binary layer, whose sums do not
        depend on any threshold and come precomputed as ``first_sums``)."""
        n = x.shape[0]
        for i, layer in enumerate(self.program.layers[start:]):
            if not layer.is_binary:
                x = _digital(layer, x)
                continue
            if i == 0:
                mu, (ho, wo) = first_sums, (x.shape[2], x.shape[3])
                if layer.kind == "conv_binary":
                    _, (ho, wo) = self.sums(layer, x[:1])
            else:
                mu, (ho, wo) = self.sums(layer, x)
            z = (mu - theta[layer.name] + 0.5) / self.spread(layer.name)
            soft = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
            if self.straight_through:  # the die's hard decisions forward, the soft ones' gradient back
                hard = (mu - theta[layer.name] + 0.5 >= 0).to(soft.dtype)
                p = hard + soft - soft.detach()
            else:
                p = soft
            if layer.kind == "conv_binary":
                p = p.transpose(1, 2).reshape(n, layer.n_out, ho, wo)
                pool = _pair(layer.attrs.get("pool", 1))
                x = F.max_pool2d(p, pool) if pool != (1, 1) else p
            else:
                x = p
        return x


def train_thresholds(
    program: NetworkProgram,
    surrogate: Mapping[str, LayerSurrogate],
    features: F32,
    labels: NDArray[np.integer],
    teacher_logits: F32,
    start: Mapping[str, NDArray[np.integer]] | None = None,
    *,
    config: FinetuneConfig | None = None,
    rng: np.random.Generator,
) -> dict[str, NDArray[np.int32]]:
    """Integer thresholds (per binary layer, (Cout,)) trained on the surrogate from ``start`` (None:
    the surrogate's own two-point trim).

    features (N, C, H, W) float32 and labels (N,): the calibration set; teacher_logits (N, classes):
    the ideal chip's logits on it.
    """
    cfg = config or FinetuneConfig()
    torch.manual_seed(int(rng.integers(2**31)))
    net = _SoftNetwork(program, surrogate)
    start = start if start is not None else {k: v.threshold for k, v in surrogate.items()}
    with torch.no_grad():
        x0, first = _digital_prefix(program, features)
        first_sums, _ = net.sums(program.layers[first], x0)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    teacher = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
    theta = {k: torch.tensor(np.asarray(v, dtype=np.float32), requires_grad=True) for k, v in start.items()}
    opt = torch.optim.Adam(list(theta.values()), lr=cfg.lr_code)
    n = x0.shape[0]
    t = cfg.kd_temperature

    def hard_accuracy() -> float:
        """Accuracy of the surrogate's hard decisions (the die's, as fitted) on the whole set."""
        with torch.no_grad():
            logits = net.forward(x0, first, {k: torch.round(v) for k, v in theta.items()}, first_sums)
        return float((logits.argmax(dim=1) == y).float().mean())

    best_acc, best = hard_accuracy(), {k: v.detach().clone() for k, v in theta.items()}
    for step in range(cfg.steps):
        frac = step / max(1, cfg.steps - 1)
        net.temperature = cfg.temperature_start_code + frac * (
            cfg.temperature_code - cfg.temperature_start_code
        )
        idx = torch.from_numpy(rng.choice(n, size=min(cfg.batch, n), replace=False))
        logits = net.forward(x0[idx], first, theta, first_sums[idx])
        loss = F.cross_entropy(logits, y[idx])
        if cfg.kd_weight > 0:
            loss = loss + cfg.kd_weight * t * t * F.kl_div(
                F.log_softmax(logits / t, dim=1), F.softmax(teacher[idx] / t, dim=1), reduction="batchmean"
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            acc = hard_accuracy()
            if acc > best_acc:  # ties keep the earlier thresholds, the nearer to the start
                best_acc, best = acc, {k: v.detach().clone() for k, v in theta.items()}
    return {k: np.rint(v.numpy()).astype(np.int32) for k, v in best.items()}
