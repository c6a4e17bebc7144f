"""The synthetic KWS dataset: shapes, balance, determinism, speaker-disjoint splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.nn.features import DEFAULT_SPEC, log_mel
from app.nn.kws_data import (
    CLASS_NAMES,
    SPLITS,
    dataset_dir,
    make_config,
    make_speakers,
    split_speakers,
)
from tests.nn.conftest import TINY_CLIPS, TINY_SEED, TINY_SPEAKERS, tiny_split


def test_feature_shape_and_balance(tiny_cache: Path) -> None:
    for split in SPLITS:
        s = tiny_split(tiny_cache, split)
        n = TINY_CLIPS * len(CLASS_NAMES)
        assert s.features.shape == (n, 1, 40, 49)
        assert s.features.dtype == np.float32
        assert np.isfinite(s.features).all()
        assert np.bincount(s.labels, minlength=len(CLASS_NAMES)).tolist() == [TINY_CLIPS] * len(CLASS_NAMES)
        assert s.class_names == CLASS_NAMES
    # normalised with the fixed constants: roughly zero-mean, unit-scale
    x = tiny_split(tiny_cache, "train").features
    assert abs(float(x.mean())) < 1.0 and 0.5 < float(x.std()) < 2.0


def test_same_seed_gives_identical_features(tiny_cache: Path, tmp_path: Path) -> None:
    again = tiny_split(tmp_path, "test")
    first = tiny_split(tiny_cache, "test")
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.labels, first.labels)
    np.testing.assert_array_equal(again.speaker_ids, first.speaker_ids)


def test_splits_have_disjoint_speakers(tiny_cache: Path) -> None:
    ids = {s: set(tiny_split(tiny_cache, s).speaker_ids.tolist()) - {-1} for s in SPLITS}
    assert ids["train"] and ids["val"] and ids["test"]
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    manifest = json.loads(
        (
            dataset_dir(tiny_cache, make_config(TINY_SEED, TINY_CLIPS, TINY_SPEAKERS)) / "manifest.json"
        ).read_text()
    )
    assert ids["test"] <= set(manifest["speakers"]["test"])


def test_speaker_split_is_a_partition_and_seeded() -> None:
    speakers = make_speakers(100, np.random.default_rng(1))
    assert make_speakers(100, np.random.default_rng(1)) == speakers
    parts = split_speakers(speakers, np.random.default_rng(2))
    ids = [sp.speaker_id for p in parts.values() for sp in p]
    assert sorted(ids) == list(range(100))
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (80, 10, 10)
    # the split depends on the seed and the speaker count only, not on the clip counts
    assert make_config(0, 5).key() != make_config(0, 6).key()


def test_log_mel_frames_and_tone_band() -> None:
    t_s = np.arange(DEFAULT_SPEC.clip_samples) / DEFAULT_SPEC.sample_rate_hz
    tone = 0.1 * np.sin(2 * np.pi * 1000.0 * t_s)
    lm = log_mel(tone)
    assert lm.shape == (40, 49)
    peak_band = int(lm.mean(axis=1).argmax())
    # 1 kHz sits in the lower-middle of a 20 Hz - 8 kHz mel axis
    assert 12 <= peak_band <= 20
    with pytest.raises(ValueError):
        log_mel(tone[:-1])
