"""Training of the reference digits BNN (``digits-bnn@1``, torch CPU) and its export.

The torch model mirrors the exported network layer for layer (see docs/model.md):

* a digital 3x3 convolution (padding 1) + batch norm + step -> {0,1} maps of 8 x 8;
* binary 3x3 convolutions (padding 1, weights ``sign(w_latent)``, batch norm on the integer sums,
  step, max-pool 2x2), down to 2 x 2;
* flatten, batch norm, a digital linear classifier (10 logits).

The straight-through estimators, the sparse batch-norm initialisation and the folding of batch
norm into integer thresholds are the KWS model's (:mod:`app.nn.train`). A flattened head instead
of the KWS model's global average keeps where a stroke is, which is what tells an 8x8 digit apart.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from app.nn.dataset import Dataset
from app.nn.digits import (
    CLASS_NAMES,
    DEFAULT_SPLIT_SEED,
    DIGITS_MODEL_REF,
    DIGITS_REFERENCE_FILE,
    INPUT_SHAPE,
    digits_datasets,
)
from app.nn.ideal_chip import ideal_chip_agreement
from app.nn.model import save_model
from app.nn.network import (
    BinaryNetwork,
    DatasetRefs,
    GradeLimit,
    Layer,
    PassLimits,
    Preprocessing,
    accuracy,
    predict,
)
from app.nn.train import TrainResult, _bn_scale_shift, binarize, fold_binary_threshold, step, train_epoch

HISTORY_FILE = "digits_bnn_history.json"
# Relative limits: a fraction of the model's own ideal-chip accuracy on its test set.
PASS_LIMITS = PassLimits(
    "relative",
    (
        GradeLimit(1, "PASS_GRADE_A", 0.97),
        GradeLimit(2, "PASS_GRADE_B", 0.94),
        GradeLimit(3, "PASS_GRADE_C", 0.90),
        GradeLimit(4, "PASS_GRADE_D", 0.85),
    ),
)


@dataclass(frozen=True)
class DigitsArch:
    """Layer sizes (3x3 kernels, zero padding 1 everywhere).

    28 digital channels make the first binary layer one row tile (28 x 9 = 252 <= 256 rows).
    """

    conv0_channels: int = 28
    binary_channels: tuple[int, ...] = (64, 64)
    binary_pools: tuple[int, ...] = (2, 2)
    # As in the KWS model: every channel starts sparse, which trains a {0,1} network and keeps the
    # bit-line sums small enough for the ADC.
    bn_bias_init: float = -2.0


@dataclass(frozen=True)
class DigitsTrainConfig:
    """Optimisation settings; ``shift_px``: random translations of up to that many pixels."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 1e-5
    seed: int = 0
    shift_px: int = 1
    label_smoothing: float = 0.05
    arch: DigitsArch = field(default_factory=DigitsArch)


class DigitsBnn(nn.Module):
    """Torch twin of the exported network; input (N, 1, 8, 8) float32, output logits (N, 10)."""

    def __init__(self, arch: DigitsArch, n_classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        if len(arch.binary_channels) != len(arch.binary_pools):
            raise ValueError("binary_channels and binary_pools must have the same length")
        self.arch = arch
        self.conv0 = nn.Conv2d(INPUT_SHAPE[0], arch.conv0_channels, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(arch.conv0_channels)
        self.bweights = nn.ParameterList()
        self.bbns = nn.ModuleList()
        cin, side = arch.conv0_channels, INPUT_SHAPE[1]
        for cout, pool in zip(arch.binary_channels, arch.binary_pools, strict=True):
            bound = 1.0 / math.sqrt(cin * 9)  # small latent weights: signs flip early in training
            self.bweights.append(nn.Parameter(torch.empty(cout, cin, 3, 3).uniform_(-bound, bound)))
            self.bbns.append(nn.BatchNorm2d(cout))
            cin, side = cout, side // pool
        with torch.no_grad():
            for bn in (self.bn0, *self.bbns):
                bn.bias.fill_(arch.bn_bias_init)
        self.head_bn = nn.BatchNorm1d(cin * side * side)
        self.fc = nn.Linear(cin * side * side, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = step(self.bn0(self.conv0(x)))
        for w, bn, pool in zip(self.bweights, self.bbns, self.arch.binary_pools, strict=True):
            # pool between batch norm and step: equal to pooling after the (monotone) step
            y = bn(F.conv2d(h, binarize(w), padding=1))
            h = step(F.max_pool2d(y, pool) if pool > 1 else y)
        return self.fc(self.head_bn(h.flatten(1)))

    def clip_latent(self) -> None:
        with torch.no_grad():
            for w in self.bweights:
                w.clamp_(-1.0, 1.0)


def export_digits_network(
    model: DigitsBnn,
    *,
    datasets: DatasetRefs,
    version: str = "1",
    metrics: dict[str, Any] | None = None,
) -> BinaryNetwork:
    """The :class:`BinaryNetwork` computing what ``model`` computes in eval mode (batch norm folded)."""
    s0, b0 = _bn_scale_shift(model.bn0)
    w0 = model.conv0.weight.detach().double().numpy() * s0[:, None, None, None]
    layers = [
        Layer(
            "conv_digital", "conv0", weight=w0.astype(np.float32), bias=b0.astype(np.float32), padding=(1, 1)
        )
    ]
    for i, (w, bn, pool) in enumerate(zip(model.bweights, model.bbns, model.arch.binary_pools, strict=True)):
        wb = np.where(w.detach().numpy() >= 0, 1, -1).astype(np.int8)
        wf, thr = fold_binary_threshold(wb, *_bn_scale_shift(bn))  # type: ignore[arg-type]
        layers.append(
            Layer("conv_binary", f"bconv{i + 1}", weight=wf, threshold=thr, padding=(1, 1), pool=(pool, pool))
        )
    layers.append(Layer("flatten", "flatten"))
    sh, bh = _bn_scale_shift(model.head_bn)
    wfc = model.fc.weight.detach().double().numpy()
    bfc = model.fc.bias.detach().double().numpy()
    layers.append(
        Layer(
            "dense_digital",
            "fc",
            weight=(wfc * sh[None, :]).astype(np.float32),
            bias=(wfc @ bh + bfc).astype(np.float32),
        )
    )
    name, _ = DIGITS_MODEL_REF.split("@")
    return BinaryNetwork(
        name,
        version,
        tuple(layers),
        CLASS_NAMES,
        None,
        dict(metrics or {}),
        input_shape=INPUT_SHAPE,
        preprocessing=Preprocessing("none"),
        datasets=datasets,
        pass_limits=PASS_LIMITS,
    )


def _shift(x: torch.Tensor, max_px: int, gen: torch.Generator) -> torch.Tensor:
    """Translate every image (N, C, H, W) by up to ``max_px`` pixels each way, zero fill."""
    if max_px <= 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (max_px, max_px, max_px, max_px))
    dy = torch.randint(0, 2 * max_px + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_px + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, pad.shape[3])
    out = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return torch.gather(out, 3, cols)


def train_digits_model(
    train: Dataset,
    held_out: Dataset,
    config: DigitsTrainConfig,
    datasets: DatasetRefs,
    log: Callable[[str], None] = print,
) -> tuple[DigitsBnn, BinaryNetwork, list[dict[str, float]]]:
    """Train for ``config.epochs`` (one-cycle schedule) and export the last epoch.

    ``held_out`` (the calibration split) is only measured, never selected on, so that the test
    split stays untouched and the result does not depend on a selection rule.
    """
    torch.manual_seed(config.seed)  # torch's parameter init has no generator argument
    gen = torch.Generator().manual_seed(config.seed)
    x_tr = torch.from_numpy(np.ascontiguousarray(train.x))
    y_tr = torch.from_numpy(np.ascontiguousarray(train.y))
    model = DigitsBnn(config.arch)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=config.lr,
        total_steps=config.epochs * math.ceil(len(x_tr) / config.batch_size),
        pct_start=0.15,
    )
    history: list[dict[str, float]] = []
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(
            model,
            opt,
            sched,
            x_tr,
            y_tr,
            batch_size=config.batch_size,
            gen=gen,
            augment=lambda xb: _shift(xb, config.shift_px, gen),
            label_smoothing=config.label_smoothing,
        )
        model.eval()
        net = export_digits_network(model, datasets=datasets)
        rec = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 4),
            "train_acc": round(train_acc, 4),
            "calibration_acc": round(accuracy(net, held_out.x, held_out.y), 4),
            "epoch_s": round(time.perf_counter() - t0, 2),
        }
        history.append(rec)
        log(
            f"epoch {epoch + 1:3d}/{config.epochs}: loss {rec['train_loss']:.3f} train {rec['train_acc']:.3f} "
            f"calibration split {rec['calibration_acc']:.3f} ({rec['epoch_s']:.1f} s)"
        )
    return model, export_digits_network(model, datasets=datasets), history


def _chip_metrics(net: BinaryNetwork, x: NDArray[np.float32], y: NDArray[np.int64]) -> dict[str, Any]:
    r = ideal_chip_agreement(net, x, y)
    return {
        "clips": len(y),
        "agreement": round(r.agreement, 4),
        "chip_accuracy": round(float(r.chip_accuracy or 0.0), 4),
        "software_accuracy": round(float(r.software_accuracy or 0.0), 4),
        "adc_saturated_fraction": {k: round(v, 5) for k, v in r.saturated_fraction.items()},
    }


def train_digits_reference(
    out_dir: Path | str,
    seed: int = 0,
    *,
    config: DigitsTrainConfig | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    version: str = "1",
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Reproduce ``digits-bnn@1``: split the digits, train, export, measure on the test split and
    on the ideal chip, and write ``out_dir/digits_bnn.npz`` and ``out_dir/digits_bnn_history.json``.

    ``val_accuracy`` of the result is the accuracy on the calibration split (never trained on).
    """
    config = config or DigitsTrainConfig(seed=seed)
    out_dir = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is tiny; one thread also makes the float sums reproducible
    try:
        ds = digits_datasets(split_seed)
        tr, ca, te = ds["train"], ds["calibration"], ds["test"]
        refs = DatasetRefs(ca.ref, te.ref)
        t0 = time.perf_counter()
        _, net, history = train_digits_model(tr, ca, config, refs, log)
        net = replace(net, version=version)
        train_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    pred = predict(net, te.x)
    test_acc = float(np.mean(pred == te.y))
    chip = _chip_metrics(net, te.x, te.y)
    log(
        f"ideal chip: agreement {chip['agreement']:.4f} on {chip['clips']} test images, chip accuracy "
        f"{chip['chip_accuracy']:.4f}; ADC-saturated partial sums {chip['adc_saturated_fraction']}"
    )
    metrics = {
        "software_test_accuracy": round(test_acc, 4),
        "software_calibration_accuracy": round(float(history[-1]["calibration_acc"]), 4),
        "test_per_class_accuracy": {
            c: round(float(np.mean(pred[te.y == i] == i)), 4) for i, c in enumerate(CLASS_NAMES)
        },
        "split": {
            "seed": split_seed,
            "train": len(tr.y),
            "calibration": len(ca.y),
            "test": len(te.y),
            "test_indices_sha256": te.provenance["indices_sha256"],
        },
        "train": {
            "seed": config.seed,
            "epochs": config.epochs,
            "train_s": round(train_s, 1),
            **{k: v for k, v in asdict(config).items() if k not in ("seed", "epochs")},
        },
        "ideal_chip": chip,
    }
    net = replace(net, metrics=metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_model(net, out_dir / DIGITS_REFERENCE_FILE)
    (out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
    log(f"test accuracy {test_acc:.4f}; trained in {train_s:.0f} s; wrote {path}")
    return TrainResult(path, net, test_acc, metrics["software_calibration_accuracy"], train_s, history)  # type: ignore[arg-type]
