"""Training of the reference binary KWS network (torch, CPU) and its export to a BinaryNetwork.

The torch model mirrors :mod:`app.nn.model` layer for layer:

* a digital 3x3 convolution (stride 2) + batch norm + step -> {0,1};
* binary 3x3 convolutions: weights ``sign(w_latent)`` in {-1,+1}, inputs {0,1} with zero padding,
  batch norm on the integer sums, step -> {0,1}, optional max-pool; the step and the sign pass
  gradients straight through inside [-1, 1] (STE);
* global average pool, batch norm, a digital linear classifier.

Export folds every batch norm: into the digital layers' weights and bias, and into one integer
threshold per binary channel (negating the channel when the gain is negative).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from app.nn.features import DEFAULT_SPEC, FeatureSpec
from app.nn.folding import binary_layer, conv_digital_layer, dense_digital_layer, sign_pm1
from app.nn.folding import fold_binary_threshold as fold_binary_threshold  # re-exported
from app.nn.kws_data import CLASS_NAMES, load_kws_split, make_config
from app.nn.model import BinaryNetwork, Layer, accuracy, ideal_chip_agreement, predict, save_model
from app.nn.torch_export import batchnorm_params, binarize, step, tensor_f32

REFERENCE_NAME = "kws-bnn"
REFERENCE_FILE = "kws_bnn.npz"


@dataclass(frozen=True)
class ArchConfig:
    """Layer sizes of the KWS BNN (3x3 kernels, zero padding 1 everywhere)."""

    conv0_channels: int = 28
    conv0_stride: int = 2
    conv0_pool: int = 2
    binary_channels: tuple[int, ...] = (56, 56, 56, 56)
    binary_pools: tuple[int, ...] = (1, 2, 1, 1)
    # Initial batch-norm shift before each step: -2 starts every channel sparse (~2 % of units on),
    # which trains far better than the 50 % density of a zero shift: a {0,1} unit cannot carry
    # magnitude, so it has to learn to fire only on strong evidence (and small sums suit the ADC).
    bn_bias_init: float = -2.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``sum_noise_mac`` adds Gaussian noise of that many MAC units (per
    row tile of 256) to the binary sums during training, a cheap variation-robustness trick."""

    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-5
    seed: int = 0
    sum_noise_mac: float = 0.0
    spec_augment: bool = True
    arch: ArchConfig = field(default_factory=ArchConfig)


def _pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    return F.max_pool2d(x, kernel) if kernel > 1 else x


class KwsBnn(nn.Module):
    """Torch twin of the exported network; input (N, 1, 40, 49) float32, output logits (N, n_classes)."""

    def __init__(self, arch: ArchConfig, n_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        if len(arch.binary_channels) != len(arch.binary_pools):
            raise ValueError("binary_channels and binary_pools must have the same length")
        self.arch = arch
        self.conv0 = nn.Conv2d(
            in_channels, arch.conv0_channels, 3, stride=arch.conv0_stride, padding=1, bias=False
        )
        self.bn0 = nn.BatchNorm2d(arch.conv0_channels)
        self.bweights = nn.ParameterList()
        self.bbns = nn.ModuleList()
        cin = arch.conv0_channels
        for cout in arch.binary_channels:
            # small latent weights (PyTorch's conv init scale) so that signs can flip early in training
            bound = 1.0 / math.sqrt(cin * 9)
            self.bweights.append(nn.Parameter(torch.empty(cout, cin, 3, 3).uniform_(-bound, bound)))
            self.bbns.append(nn.BatchNorm2d(cout))
            cin = cout
        with torch.no_grad():
            for bn in (self.bn0, *self.bbns):
                bn.bias.fill_(arch.bn_bias_init)
        self.head_bn = nn.BatchNorm1d(cin)
        self.fc = nn.Linear(cin, n_classes)
        self.sum_noise_mac = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling sits between batch norm and the step: step is monotone, so max-pool(step(y)) ==
        # step(max-pool(y)) exactly (whatever the sign of the BN gain), and the pool passes its
        # gradient to the largest real pre-activation instead of to an arbitrary tied bit.
        h = step(_pool(self.bn0(self.conv0(x)), self.arch.conv0_pool))
        for w, bn, pool in zip(self.bweights, self.bbns, self.arch.binary_pools, strict=True):
            s = F.conv2d(h, binarize(w), padding=1)
            if self.training and self.sum_noise_mac > 0:
                n_tiles = math.ceil(w[0].numel() / 256)
                s = s + torch.randn_like(s) * (self.sum_noise_mac * math.sqrt(n_tiles))
            h = step(_pool(bn(s), pool))
        return self.fc(self.head_bn(h.mean(dim=(2, 3))))

    def clip_latent(self) -> None:
        with torch.no_grad():
            for w in self.bweights:
                w.clamp_(-1.0, 1.0)


# ------------------------------------------------------------------------------------------ export
def _bn_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Eval-mode batch norm as ``y = scale * x + shift`` per channel (float64); kept for callers of
    the old helper, the folding itself lives in :mod:`app.nn.folding`."""
    return batchnorm_params(bn).scale_shift()


def export_network(
    model: KwsBnn,
    class_names: Sequence[str],
    *,
    name: str = REFERENCE_NAME,
    version: str = "1",
    spec: FeatureSpec = DEFAULT_SPEC,
    metrics: dict[str, Any] | None = None,
) -> BinaryNetwork:
    """The :class:`BinaryNetwork` computing what ``model`` computes in eval mode."""
    arch = model.arch
    layers = [
        conv_digital_layer(
            "conv0",
            tensor_f32(model.conv0.weight),
            None,
            batchnorm_params(model.bn0),
            stride=(arch.conv0_stride, arch.conv0_stride),
            padding=(1, 1),
        )
    ]
    if arch.conv0_pool > 1:
        layers.append(Layer("maxpool", "pool0", pool=(arch.conv0_pool, arch.conv0_pool)))
    for i, (w, bn, pool) in enumerate(zip(model.bweights, model.bbns, arch.binary_pools, strict=True)):
        layers.append(
            binary_layer(
                "conv_binary",
                f"bconv{i + 1}",
                sign_pm1(tensor_f32(w)),
                batchnorm_params(bn),  # type: ignore[arg-type]
                padding=(1, 1),
                pool=(pool, pool),
            )
        )
    layers.append(Layer("avgpool_global", "gap"))
    fc_weight, fc_bias = tensor_f32(model.fc.weight), tensor_f32(model.fc.bias)
    layers.append(dense_digital_layer("fc", fc_weight, fc_bias, batchnorm_params(model.head_bn)))
    return BinaryNetwork(name, version, tuple(layers), tuple(class_names), spec, dict(metrics or {}))


# ---------------------------------------------------------------------------------------- training
def _spec_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random time shift (+-3 frames, zero fill), one time mask and one mel mask per clip."""
    n, _, n_mels, n_frames = x.shape
    shift = torch.randint(-3, 4, (n,), generator=gen)
    frame = torch.arange(n_frames)
    src = frame[None, :] - shift[:, None]  # (n, frames)
    valid = (src >= 0) & (src < n_frames)
    idx = src.clamp(0, n_frames - 1)[:, None, None, :].expand(n, 1, n_mels, n_frames)
    out = torch.gather(x, 3, idx) * valid[:, None, None, :]
    t0 = torch.randint(0, n_frames, (n,), generator=gen)
    tw = torch.randint(0, 6, (n,), generator=gen)
    f0 = torch.randint(0, n_mels, (n,), generator=gen)
    fw = torch.randint(0, 6, (n,), generator=gen)
    tmask = (frame[None, :] >= t0[:, None]) & (frame[None, :] < (t0 + tw)[:, None])
    mel = torch.arange(n_mels)
    fmask = (mel[None, :] >= f0[:, None]) & (mel[None, :] < (f0 + fw)[:, None])
    keep = ~(tmask[:, None, None, :] | fmask[:, None, :, None])
    return out * keep


def train_epoch(
    model: KwsBnn | Any,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    gen: torch.Generator,
    augment: Callable[[torch.Tensor], torch.Tensor],
    label_smoothing: float,
) -> tuple[float, float]:
    """One epoch over (x, y) in a random order of ``gen``: each batch augmented, one optimiser and
    scheduler step, latent weights clipped (``model.clip_latent()``); returns (mean loss, accuracy)."""
    model.train()
    perm = torch.randperm(len(x), generator=gen)
    total, correct, loss_sum = 0, 0, 0.0
    for b in range(math.ceil(len(x) / batch_size)):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        xb, yb = augment(x[idx]), y[idx]
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        model.clip_latent()
        loss_sum += loss.item() * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        total += len(idx)
    return loss_sum / total, correct / total


def train_model(
    train: tuple[NDArray[np.float32], NDArray[np.int64]],
    val: tuple[NDArray[np.float32], NDArray[np.int64]],
    config: TrainConfig,
    class_names: Sequence[str] = CLASS_NAMES,
    log: Callable[[str], None] = print,
) -> tuple[KwsBnn, BinaryNetwork, list[dict[str, float]]]:
    """Train; returns the torch model, the exported network of the best validation epoch, history.

    train/val: features float32 (N, 1, n_mels, n_frames), labels int64 (N,).
    Validation accuracy is measured on the exported network (exact integer arithmetic).
    """
    torch.manual_seed(config.seed)  # torch's parameter init has no generator argument
    gen = torch.Generator().manual_seed(config.seed)
    x_tr = torch.from_numpy(np.ascontiguousarray(train[0]))
    y_tr = torch.from_numpy(np.ascontiguousarray(train[1]))
    model = KwsBnn(config.arch, len(class_names), in_channels=x_tr.shape[1])
    model.sum_noise_mac = config.sum_noise_mac
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=config.lr,
        total_steps=config.epochs * math.ceil(len(x_tr) / config.batch_size),
        pct_start=0.15,
    )
    best: tuple[float, BinaryNetwork] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    history = []

    def augment(xb: torch.Tensor) -> torch.Tensor:
        return _spec_augment(xb, gen) if config.spec_augment else xb

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
            augment=augment,
            label_smoothing=0.05,
        )
        model.eval()
        net = export_network(model, class_names)
        val_acc = accuracy(net, val[0], val[1])
        rec = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_acc": val_acc,
            "epoch_s": time.perf_counter() - t0,
        }
        history.append(rec)
        log(
            f"epoch {epoch + 1:2d}/{config.epochs}: loss {rec['train_loss']:.3f} train {rec['train_acc']:.3f} "
            f"val {val_acc:.3f} ({rec['epoch_s']:.0f} s)"
        )
        if best is None or val_acc > best[0]:
            best = (val_acc, net)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best is not None and best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, best[1], history


@dataclass(frozen=True)
class TrainResult:
    path: Path
    network: BinaryNetwork
    test_accuracy: float
    val_accuracy: float
    train_s: float
    history: list[dict[str, float]]


def train_reference(
    cache_dir: Path | None,
    out_dir: Path,
    seed: int = 0,
    *,
    config: TrainConfig | None = None,
    data_seed: int = 0,
    clips_per_class: int | dict[str, int] | None = None,
    version: str = "1",
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Reproduce the reference model: load (or synthesise) the dataset, train, export, measure
    software test accuracy on held-out speakers, and write ``out_dir/kws_bnn.npz``."""
    config = config or TrainConfig(seed=seed)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    tr = load_kws_split("train", cache_dir, data_seed, clips_per_class)
    va = load_kws_split("val", cache_dir, data_seed, clips_per_class)
    te = load_kws_split("test", cache_dir, data_seed, clips_per_class)
    log(
        f"dataset: train {len(tr.labels)}, val {len(va.labels)}, test {len(te.labels)} clips ({time.perf_counter() - t0:.0f} s)"
    )
    t1 = time.perf_counter()
    _, net, history = train_model(
        (tr.features, tr.labels), (va.features, va.labels), config, tr.class_names, log
    )
    train_s = time.perf_counter() - t1
    pred = predict(net, te.features)
    test_acc = float(np.mean(pred == te.labels))
    per_class = {c: round(float(np.mean(pred[te.labels == i] == i)), 4) for i, c in enumerate(te.class_names)}
    chip = _ideal_chip_metrics(net, te.features, te.labels, config.seed)
    log(
        f"ideal chip: agreement {chip['agreement']:.4f} with the software pass on {chip['clips']} test clips; "
        f"ADC-saturated partial sums {chip['adc_saturated_fraction']}"
    )
    data_cfg = make_config(data_seed, clips_per_class)
    metrics = {
        "software_test_accuracy": round(test_acc, 4),
        "software_val_accuracy": round(float(max(h["val_acc"] for h in history)), 4),
        "test_per_class_accuracy": per_class,
        "test_clips": len(te.labels),
        "train_clips": len(tr.labels),
        "dataset": {
            "seed": data_seed,
            "key": data_cfg.key(),
            "clips_per_class": dict(data_cfg.clips_per_class),
        },
        "train": {
            "seed": config.seed,
            "epochs": config.epochs,
            "train_s": round(train_s, 1),
            **_config_json(config),
        },
        "ideal_chip": chip,
    }
    net = BinaryNetwork(net.name, version, net.layers, net.class_names, net.feature_spec, metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_model(net, out_dir / REFERENCE_FILE)
    (out_dir / "kws_bnn_history.json").write_text(json.dumps(history, indent=1))
    log(f"test accuracy (held-out speakers) {test_acc:.4f}; trained in {train_s:.0f} s; wrote {path}")
    return TrainResult(path, net, test_acc, metrics["software_val_accuracy"], train_s, history)  # type: ignore[arg-type]


def _ideal_chip_metrics(
    net: BinaryNetwork,
    features: NDArray[np.float32],
    labels: NDArray[np.int64],
    seed: int,
    n_clips: int = 1200,
) -> dict[str, Any]:
    """Ideal-chip (``hardware.chip`` with the ideal ADC) agreement on a seeded subset of the test clips."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(labels), size=min(n_clips, len(labels)), replace=False))
    r = ideal_chip_agreement(net, features[idx], labels[idx])
    return {
        "clips": len(idx),
        "agreement": round(r.agreement, 4),
        "chip_accuracy": round(float(r.chip_accuracy or 0.0), 4),
        "software_accuracy": round(float(r.software_accuracy or 0.0), 4),
        "adc_saturated_fraction": {k: round(v, 5) for k, v in r.saturated_fraction.items()},
    }


def _config_json(config: TrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d.pop("seed", None)
    d.pop("epochs", None)
    return d
