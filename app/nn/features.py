"""Log-mel features of one-second 16 kHz clips, in numpy only.

A clip of 16,000 samples gives 49 frames of 25 ms (400 samples) every 20 ms (320 samples), each a
512-point FFT power spectrum pooled into 40 triangular mel bands (HTK mel scale, 20 Hz - 8 kHz),
then ``log(power + floor)``. Features are normalised with fixed constants (:data:`DEFAULT_SPEC`),
which a model file stores so that a consumer can check it feeds the features the model expects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class FeatureSpec:
    """How a clip becomes the network input ``(1, n_mels, n_frames)`` float32."""

    sample_rate_hz: int = 16_000
    clip_samples: int = 16_000
    win_samples: int = 400
    hop_samples: int = 320
    n_fft: int = 512
    n_mels: int = 40
    fmin_hz: float = 20.0
    fmax_hz: float = 8_000.0
    log_floor: float = 1e-6
    # Fixed normalisation: (log_mel - norm_mean) / norm_std; measured once on the training split of
    # the default synthetic dataset and frozen, so features never depend on which data was loaded.
    norm_mean: float = -5.2
    norm_std: float = 4.1

    @property
    def n_frames(self) -> int:
        return 1 + (self.clip_samples - self.win_samples) // self.hop_samples

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.n_frames)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Parse and check a spec (every field, of the right type and range); raises ValueError."""
        if not isinstance(d, dict):
            raise ValueError("feature_spec must be an object")
        fields = set(cls.__dataclass_fields__)
        if set(d) != fields:
            missing, extra = sorted(fields - set(d)), sorted(set(d) - fields)
            raise ValueError(f"feature_spec keys: missing {missing}, unexpected {extra}")
        ints = ("sample_rate_hz", "clip_samples", "win_samples", "hop_samples", "n_fft", "n_mels")
        for k in ints:
            v = d[k]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 10**6:
                raise ValueError(f"feature_spec.{k} must be an integer in [1, 1000000], got {v!r}")
        for k in fields - set(ints):
            v = d[k]
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"feature_spec.{k} must be a finite number, got {v!r}")
        values: dict[str, Any] = {k: d[k] if k in ints else float(d[k]) for k in fields}
        spec = cls(**values)
        if not (
            spec.win_samples <= spec.clip_samples
            and spec.win_samples <= spec.n_fft
            and 0 <= spec.fmin_hz < spec.fmax_hz <= spec.sample_rate_hz / 2
            and spec.log_floor > 0
            and spec.norm_std > 0
            and spec.n_mels <= 1024
            and spec.n_frames <= 4096
        ):
            raise ValueError(
                "feature_spec is inconsistent: need win <= clip, win <= n_fft, 0 <= fmin < fmax <= "
                "sample_rate / 2, log_floor > 0, norm_std > 0, n_mels <= 1024, n_frames <= 4096"
            )
        return spec


DEFAULT_SPEC = FeatureSpec()


def _hz_to_mel(f_hz: NDArray[np.float64]) -> NDArray[np.float64]:
    return 2595.0 * np.log10(1.0 + f_hz / 700.0)


def _mel_to_hz(m: NDArray[np.float64]) -> NDArray[np.float64]:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(spec: FeatureSpec = DEFAULT_SPEC) -> NDArray[np.float64]:
    """Triangular mel filters, ndarray (n_mels, n_fft // 2 + 1), peak 1."""
    n_bins = spec.n_fft // 2 + 1
    bin_hz = np.arange(n_bins) * spec.sample_rate_hz / spec.n_fft
    edges_mel = np.linspace(
        _hz_to_mel(np.array(spec.fmin_hz)), _hz_to_mel(np.array(spec.fmax_hz)), spec.n_mels + 2
    )
    edges_hz = _mel_to_hz(edges_mel)
    fb = np.zeros((spec.n_mels, n_bins))
    for m in range(spec.n_mels):
        lo, mid, hi = edges_hz[m], edges_hz[m + 1], edges_hz[m + 2]
        rising = (bin_hz - lo) / (mid - lo)
        falling = (hi - bin_hz) / (hi - mid)
        fb[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=8)
def _window(n: int) -> NDArray[np.float64]:
    w = np.hanning(n + 1)[:-1]  # periodic Hann
    w.setflags(write=False)
    return w


def log_mel(audio: NDArray[np.floating], spec: FeatureSpec = DEFAULT_SPEC) -> NDArray[np.float32]:
    """Un-normalised log-mel energies of clips.

    audio : ndarray (n_clips, clip_samples) or (clip_samples,), float in [-1, 1].
    Returns ndarray (n_clips, n_mels, n_frames) float32 (or (n_mels, n_frames) for one clip).
    """
    x = np.asarray(audio, dtype=np.float64)
    single = x.ndim == 1
    if single:
        x = x[None, :]
    if x.shape[-1] != spec.clip_samples:
        raise ValueError(f"clips must have {spec.clip_samples} samples, got {x.shape[-1]}")
    frames = np.lib.stride_tricks.sliding_window_view(x, spec.win_samples, axis=-1)[
        :, :: spec.hop_samples
    ]  # (n, n_frames, win)
    spectrum = np.fft.rfft(frames * _window(spec.win_samples), n=spec.n_fft, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2  # (n, n_frames, n_bins)
    mel = power @ mel_filterbank(spec).T  # (n, n_frames, n_mels)
    out = np.log(mel + spec.log_floor).transpose(0, 2, 1).astype(np.float32)
    return out[0] if single else out


def normalize(
    log_mel_features: NDArray[np.floating], spec: FeatureSpec = DEFAULT_SPEC
) -> NDArray[np.float32]:
    """Apply the fixed normalisation: ``(x - norm_mean) / norm_std``, float32, same shape."""
    x = np.asarray(log_mel_features, dtype=np.float32)
    return ((x - np.float32(spec.norm_mean)) / np.float32(spec.norm_std)).astype(np.float32)


def clip_features(audio: NDArray[np.floating], spec: FeatureSpec = DEFAULT_SPEC) -> NDArray[np.float32]:
    """Network input of clips: audio (n_clips, clip_samples) -> (n_clips, 1, n_mels, n_frames) float32."""
    x = np.asarray(audio)
    if x.ndim == 1:
        x = x[None, :]
    return normalize(log_mel(x, spec), spec)[:, None, :, :]
