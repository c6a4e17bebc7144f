"""Offline keyword-spotting dataset synthesised with eSpeak NG.

No speech corpus can be downloaded here, so the dataset is synthesised: the ``espeakng-loader`` wheel
ships libespeak-ng and its voice data, which this module drives through ctypes.

* Classes: the ten Speech-Commands keywords, ``silence`` (background noise only) and ``unknown``
  (other words), in :data:`CLASS_NAMES` order; every split is balanced (same clips per class).
* Speakers: a seeded generator draws :class:`Speaker` tuples (English accent, a generated eSpeak
  voice variant with its own pitch range, formant frequencies/heights/widths, breathiness,
  roughness, synthesiser engine, plus rate, pitch and pitch range). Speakers are split into fixed
  disjoint train/val/test lists, so test clips always come from voices never seen in training.
* Augmentation per clip: per-utterance rate and pitch jitter, random spectral tilt and low-pass
  (channel), random level, random time position in the one-second window, and background noise
  (coloured 1/f^beta noise, babble of other synthesised speech from the same split, or both) at a
  random SNR; some clips are clean.
* Features: log-mel (:func:`app.nn.features.log_mel`) cached as float16, normalised on load
  (:func:`app.nn.features.normalize`) to float32 (N, 1, 40, 49).

Everything is a pure function of the seed. eSpeak keeps internal state from one utterance to the
next (the same call sequence in a fresh process gives the same samples, a different history does
not), so each fixed-size chunk of clips is rendered in a fresh worker process (a plain subprocess, see
:func:`_run_chunk`); results do not depend on the number of workers.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import signal

from app.nn.features import DEFAULT_SPEC, log_mel, normalize

DATASET_VERSION = 1
KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE = "silence"
UNKNOWN = "unknown"
CLASS_NAMES: tuple[str, ...] = (*KEYWORDS, SILENCE, UNKNOWN)
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Other words for the "unknown" class: the Speech Commands auxiliary words plus a few that share
# sounds with keywords. Homophones of keywords ("know", "write") are deliberately absent.
UNKNOWN_WORDS: tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "learn", "follow", "forward", "backward", "visual", "yellow", "noon", "cup", "town", "light",
    "often", "top", "goal", "yet", "dot", "bright", "own", "nope", "stone", "lift",
)  # fmt: skip
# Phrases for babble noise; none contains a keyword.
BABBLE_PHRASES: tuple[str, ...] = (
    "the weather was cold this morning",
    "please hand me the blue cup",
    "we will meet at the station at seven",
    "she bought three apples and a melon",
    "my brother plays the piano very well",
    "that was a surprisingly good film",
    "the train to the city is late again",
    "could you repeat the last sentence",
    "they painted the kitchen a pale green",
    "a small boat drifted across the lake",
    "the meeting starts after lunch",
    "her garden is full of roses",
)
# eSpeak NG English voices (accents); the Shavian-alphabet voice is not an accent.
ACCENTS: tuple[str, ...] = (
    "en-us", "en-us-nyc", "en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
)  # fmt: skip

DEFAULT_CLIPS_PER_CLASS: Mapping[str, int] = {"train": 2000, "val": 200, "test": 400}
DEFAULT_N_SPEAKERS = 600
SPEAKER_FRACTIONS: Mapping[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
CHUNK_CLIPS = 500  # clips per worker process; part of the dataset definition (see module doc)

_ESPEAK_RATE_HZ = 22_050
_SR_HZ = DEFAULT_SPEC.sample_rate_hz
_CLIP = DEFAULT_SPEC.clip_samples


class DatasetError(RuntimeError):
    """The synthetic dataset cannot be generated or read."""


# ------------------------------------------------------------------------------------------ speakers
@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an eSpeak accent, a generated voice variant and prosody settings.

    Formant lists hold per-cent factors for eSpeak formants 0-5 (frequency, height, width).
    ``rate_wpm`` is the speaking rate; ``pitch`` and ``pitch_range`` are eSpeak's 0-100 controls
    within the variant's ``pitch_base_hz``-``pitch_top_hz`` range; ``klatt`` 0 selects the default
    synthesiser, 1-6 a Klatt engine variant.
    """

    speaker_id: int
    accent: str
    gender: str
    pitch_base_hz: int
    pitch_top_hz: int
    formant_freq_pct: tuple[int, ...]
    formant_height_pct: tuple[int, ...]
    formant_width_pct: tuple[int, ...]
    breath: int
    roughness: int
    flutter: int
    voicing_pct: int
    consonants_pct: int
    klatt: int
    rate_wpm: int
    pitch: int
    pitch_range: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Speaker:
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    def variant_text(self, name: str) -> str:
        """The eSpeak variant file (``voices/!v/<name>``) for this speaker."""
        lines = [
            "language variant",
            f"name {name}",
            f"gender {self.gender}",
            f"pitch {self.pitch_base_hz} {self.pitch_top_hz}",
        ]
        for i, (f, h, w) in enumerate(
            zip(self.formant_freq_pct, self.formant_height_pct, self.formant_width_pct, strict=True)
        ):
            lines.append(f"formant {i} {f} {h} {w}")
        lines += [
            f"roughness {self.roughness}",
            f"flutter {self.flutter}",
            f"voicing {self.voicing_pct}",
            f"consonants {self.consonants_pct} {self.consonants_pct}",
        ]
        if self.breath > 0:
            b = self.breath
            lines += [f"breath 0 {b} {b} {b} {b} {b} 0 0", "breathw 150 150 200 200 400 400 600 600"]
        if self.klatt:
            lines.append(f"klatt {self.klatt}")
        return "\n".join(lines) + "\n"


def make_speakers(n_speakers: int, rng: np.random.Generator | int | None) -> list[Speaker]:
    """Draw ``n_speakers`` synthetic speakers (ids 0..n-1) from a seeded generator."""
    rng = np.random.default_rng(rng)
    speakers = []
    for sid in range(n_speakers):
        kind = rng.choice(["male", "female", "child"], p=[0.47, 0.43, 0.10])
        if kind == "male":
            base = rng.uniform(65, 110)
            top = base + rng.uniform(25, 60)
            tract = rng.uniform(0.92, 1.05)
        elif kind == "female":
            base = rng.uniform(135, 200)
            top = base + rng.uniform(45, 95)
            tract = rng.uniform(1.03, 1.16)
        else:
            base = rng.uniform(210, 270)
            top = base + rng.uniform(50, 100)
            tract = rng.uniform(1.14, 1.26)
        freq = 100 * tract * (1 + rng.normal(0, 0.03, 6))
        height = 100 * np.clip(1 + rng.normal(0, 0.15, 6), 0.6, 1.4)
        width = 100 * np.clip(1 + rng.normal(0, 0.2, 6), 0.6, 1.6)
        speakers.append(
            Speaker(
                speaker_id=sid,
                accent=str(rng.choice(ACCENTS)),
                gender="male" if kind == "male" else "female",
                pitch_base_hz=round(base),
                pitch_top_hz=round(top),
                formant_freq_pct=tuple(round(v) for v in freq),
                formant_height_pct=tuple(round(v) for v in height),
                formant_width_pct=tuple(round(v) for v in width),
                breath=int(rng.choice([0, 0, 0, 1, 2, 4, 6])),
                roughness=int(rng.integers(0, 4)),
                flutter=int(rng.integers(0, 30)),
                voicing_pct=int(rng.integers(80, 121)),
                consonants_pct=int(rng.integers(80, 131)),
                klatt=int(rng.choice([1, 2, 3, 4, 6])) if rng.random() < 0.15 else 0,
                rate_wpm=int(rng.integers(125, 226)),
                pitch=int(rng.integers(25, 76)),
                pitch_range=int(rng.integers(15, 91)),
            )
        )
    return speakers


def split_speakers(
    speakers: Sequence[Speaker], rng: np.random.Generator | int | None
) -> dict[str, list[Speaker]]:
    """Disjoint train/val/test speaker lists (fractions :data:`SPEAKER_FRACTIONS`), at least one each."""
    rng = np.random.default_rng(rng)
    n = len(speakers)
    if n < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} speakers, got {n}")
    order = rng.permutation(n)
    n_val = max(1, round(n * SPEAKER_FRACTIONS["val"]))
    n_test = max(1, round(n * SPEAKER_FRACTIONS["test"]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n} speakers leave none for training")
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {k: [speakers[i] for i in sorted(v)] for k, v in parts.items()}


# ------------------------------------------------------------------------------------------- eSpeak
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4
_ESPEAK_CHARS_UTF8 = 1


class _Espeak:
    """Synchronous libespeak-ng through ctypes; one per process (the library is process-global).

    eSpeak lists at most ~350 voices and variants, so speakers are not installed as variant files
    up front: a private data folder (the wheel's data linked in) holds one variant file that is
    rewritten before each utterance; eSpeak reads it again on every voice selection.
    """

    _VARIANT = "cimcalspk"

    def __init__(self, workdir: Path) -> None:
        import espeakng_loader

        src = Path(espeakng_loader.get_data_path())
        data = workdir / "espeak-ng-data"
        data.mkdir(parents=True)
        for entry in src.iterdir():
            if entry.name != "voices":
                (data / entry.name).symlink_to(entry)
        (data / "voices" / "!v").mkdir(parents=True)
        self._variant_file = data / "voices" / "!v" / self._VARIANT
        self._last_speaker: Speaker | None = None
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), 0)
        if rate != _ESPEAK_RATE_HZ:
            raise DatasetError(f"espeak_Initialize failed or returned an unexpected rate ({rate})")
        self._chunks: list[NDArray[np.int16]] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds only the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, n_samples: int, _events: Any) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0

    def synth(
        self, text: str, speaker: Speaker, rate_wpm: int, pitch: int, rand_seed: int
    ) -> NDArray[np.float64]:
        """Speak ``text`` as ``speaker``; returns float64 samples at 22,050 Hz in [-1, 1].

        ``rand_seed`` seeds eSpeak's noise generator (breath, Klatt noise), which it otherwise
        seeds from the clock.
        """
        self._lib.espeak_ng_SetRandSeed(int(rand_seed) & 0x7FFFFFFF)
        if speaker is not self._last_speaker:
            self._variant_file.write_text(speaker.variant_text(self._VARIANT))
            self._last_speaker = speaker
        voice = f"{speaker.accent}+{self._VARIANT}"
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise DatasetError(f"eSpeak has no voice {voice!r}")
        self._lib.espeak_SetParameter(_ESPEAK_RATE, int(rate_wpm), 0)
        self._lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
        self._lib.espeak_SetParameter(_ESPEAK_RANGE, int(speaker.pitch_range), 0)
        self._chunks.clear()
        buf = text.encode() + b"\0"
        err = self._lib.espeak_Synth(buf, len(buf), 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None)
        if err != 0:
            raise DatasetError(f"espeak_Synth failed with error {err} for {text!r}")
        if not self._chunks:
            return np.zeros(0)
        return np.concatenate(self._chunks).astype(np.float64) / 32768.0


# -------------------------------------------------------------------------------------------- audio
@lru_cache(maxsize=1)
def _resampler_taps() -> NDArray[np.float64]:
    # The filter resample_poly designs itself (Kaiser, beta 5), designed once instead of per call.
    taps = signal.firwin(2 * 10 * 441 + 1, 1.0 / 441, window=("kaiser", 5.0))
    return np.asarray(taps, dtype=np.float64)


def _to_16k(x_22k: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(signal.resample_poly(x_22k, 320, 441, window=_resampler_taps()), dtype=np.float64)


def _trim(
    x: NDArray[np.float64], rel_threshold: float = 0.02, margin_samples: int = 320
) -> NDArray[np.float64]:
    """Cut eSpeak's leading/trailing silence (keeps ``margin_samples`` either side)."""
    if x.size == 0:
        return x
    loud = np.flatnonzero(np.abs(x) > rel_threshold * np.abs(x).max())
    if loud.size == 0:
        return x[:0]
    return x[max(0, loud[0] - margin_samples) : loud[-1] + margin_samples]


def _rms(x: NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(x**2) + 1e-20))


def _coloured_noise(n_samples: int, beta: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """Unit-RMS noise with power spectrum ~ 1/f^beta (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n_samples))
    f = np.fft.rfftfreq(n_samples)
    f[0] = f[1]
    x = np.fft.irfft(spec / f ** (beta / 2), n=n_samples)
    return x / _rms(x)


def _babble(bank: Sequence[NDArray[np.float64]], rng: np.random.Generator) -> NDArray[np.float64]:
    """Unit-RMS babble: 3-6 random one-second excerpts of ``bank`` utterances, summed."""
    out = np.zeros(_CLIP)
    for _ in range(int(rng.integers(3, 7))):
        u = bank[int(rng.integers(len(bank)))]
        if u.size > _CLIP:
            s = int(rng.integers(0, u.size - _CLIP + 1))
            seg = u[s : s + _CLIP]
        else:
            seg = np.zeros(_CLIP)
            s = int(rng.integers(0, _CLIP - u.size + 1))
            seg[s : s + u.size] = u
        out += seg / _rms(seg) * 10 ** (rng.uniform(-6, 6) / 20)
    return out / _rms(out)


def _channel(x: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
    """Random spectral tilt and, sometimes, a low-pass: a cheap microphone/channel model."""
    a = rng.uniform(-0.4, 0.8)
    y = signal.lfilter([1.0, -a], [1.0], x)
    if rng.random() < 0.25:
        sos = signal.butter(2, rng.uniform(2_500, 7_000), btype="low", fs=_SR_HZ, output="sos")
        y = signal.sosfilt(sos, y)
    return np.asarray(y, dtype=np.float64)


def _background(rng: np.random.Generator, bank: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    """Unit-RMS background: coloured noise, babble, or a mix of the two."""
    kind = rng.choice(["coloured", "babble", "mix"], p=[0.45, 0.3, 0.25])
    if kind == "coloured":
        return _coloured_noise(_CLIP, rng.uniform(0, 2), rng)
    if kind == "babble":
        return _babble(bank, rng)
    mix = _coloured_noise(_CLIP, rng.uniform(0, 2), rng) * rng.uniform(0.3, 1.0) + _babble(bank, rng)
    return mix / _rms(mix)


@dataclass(frozen=True)
class _Clip:
    label: int
    speaker_id: int  # -1 for silence
    seed: int


def _render_clip(
    es: _Espeak, clip: _Clip, speaker: Speaker | None, bank: Sequence[NDArray[np.float64]]
) -> NDArray[np.float64]:
    """One augmented one-second clip, float64 (16000,) in [-1, 1]."""
    rng = np.random.default_rng(clip.seed)
    name = CLASS_NAMES[clip.label]
    floor = _coloured_noise(_CLIP, 0.0, rng) * 10 ** (-85 / 20)
    if name == SILENCE:
        level_dbfs = rng.uniform(-75, -25)
        noise = _coloured_noise(_CLIP, rng.uniform(0, 2), rng)
        if rng.random() < 0.3:
            noise = noise + _babble(bank, rng) * 10 ** (rng.uniform(-15, -5) / 20)
            noise /= _rms(noise)
        return np.clip(noise * 10 ** (level_dbfs / 20) + floor, -1, 1)
    assert speaker is not None
    word = str(rng.choice(UNKNOWN_WORDS)) if name == UNKNOWN else name
    rate = round(speaker.rate_wpm * rng.uniform(0.9, 1.12))
    pitch = int(np.clip(speaker.pitch + rng.integers(-8, 9), 0, 100))
    speech = _trim(_to_16k(es.synth(word, speaker, rate, pitch, int(rng.integers(2**31)))))
    if speech.size == 0:
        raise DatasetError(f"eSpeak produced no audio for {word!r} as speaker {speaker.speaker_id}")
    speech = _channel(speech, rng)
    if speech.size > _CLIP:
        s = int(rng.integers(0, speech.size - _CLIP + 1))
        speech = speech[s : s + _CLIP]
    speech *= 10 ** (rng.uniform(-38, -16) / 20) / _rms(speech)
    out = np.zeros(_CLIP)
    start = int(rng.integers(0, _CLIP - speech.size + 1))
    out[start : start + speech.size] = speech
    if rng.random() >= 0.15:  # 15 % of clips stay clean
        snr_db = rng.uniform(5, 30)
        out += _background(rng, bank) * _rms(speech) * 10 ** (-snr_db / 20)
    return np.clip(out + floor, -1, 1)


def _worker_main(task_path: str, out_path: str) -> None:
    """Entry point of a chunk worker process: task JSON in, log-mel ``.npy`` out."""
    task = json.loads(Path(task_path).read_text())
    speakers = [Speaker.from_dict(d) for d in task["speakers"]]
    clips = [_Clip(*c) for c in task["clips"]]
    with tempfile.TemporaryDirectory(prefix="cimcal-espeak-") as workdir:
        feats = _render_chunk_with(_Espeak(Path(workdir)), speakers, clips, int(task["bank_seed"]))
    np.save(out_path, feats, allow_pickle=False)


def _run_chunk(
    workdir: Path, index: int, speakers: Sequence[Speaker], clips: Sequence[_Clip], bank_seed: int
) -> NDArray[np.float16]:
    """Render one chunk in a fresh interpreter (fresh eSpeak state); returns its log-mel float16.

    A plain subprocess rather than a multiprocessing pool: it needs no ``__main__`` guard in the
    caller's script and is safe to start from a threaded server.
    """
    task_path, out_path = workdir / f"task-{index}.json", workdir / f"chunk-{index}.npy"
    task = {
        "speakers": [asdict(sp) for sp in speakers],
        "clips": [[c.label, c.speaker_id, c.seed] for c in clips],
        "bank_seed": bank_seed,
    }
    task_path.write_text(json.dumps(task))
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    env["OMP_NUM_THREADS"] = "1"
    code = "import sys; from app.nn.kws_data import _worker_main; _worker_main(sys.argv[1], sys.argv[2])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(task_path), str(out_path)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise DatasetError(f"KWS chunk worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    feats = np.load(out_path, allow_pickle=False)
    out_path.unlink()
    task_path.unlink()
    return np.asarray(feats, dtype=np.float16)


def _render_chunk_with(
    es: _Espeak, speakers: Sequence[Speaker], clips: Sequence[_Clip], bank_seed: int
) -> NDArray[np.float16]:
    by_id = {sp.speaker_id: sp for sp in speakers}
    rng = np.random.default_rng(bank_seed)
    bank = []
    for _ in range(12):
        sp = speakers[int(rng.integers(len(speakers)))]
        phrase = BABBLE_PHRASES[int(rng.integers(len(BABBLE_PHRASES)))]
        bank.append(_trim(_to_16k(es.synth(phrase, sp, sp.rate_wpm, sp.pitch, int(rng.integers(2**31))))))
    audio = np.stack([_render_clip(es, c, by_id.get(c.speaker_id), bank) for c in clips])
    return log_mel(audio)[:, None, :, :].astype(np.float16)


# ------------------------------------------------------------------------------------------ dataset
@dataclass(frozen=True)
class KwsConfig:
    """Everything the dataset is a function of."""

    seed: int = 0
    clips_per_class: tuple[tuple[str, int], ...] = tuple(DEFAULT_CLIPS_PER_CLASS.items())
    n_speakers: int = DEFAULT_N_SPEAKERS
    version: int = DATASET_VERSION

    def per_class(self, split: str) -> int:
        return dict(self.clips_per_class)[split]

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class KwsSplit:
    """One split: ``features`` float32 (N, 1, 40, 49), ``labels`` int64 (N,) indexing
    ``class_names``, ``speaker_ids`` int32 (N,) (-1 for silence clips)."""

    split: str
    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    speaker_ids: NDArray[np.int32]
    class_names: tuple[str, ...]


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "cimcal" / "kws"


def make_config(
    seed: int = 0,
    clips_per_class: int | Mapping[str, int] | None = None,
    n_speakers: int = DEFAULT_N_SPEAKERS,
) -> KwsConfig:
    """A :class:`KwsConfig`; an int ``clips_per_class`` applies to every split."""
    if clips_per_class is None:
        per = dict(DEFAULT_CLIPS_PER_CLASS)
    elif isinstance(clips_per_class, int):
        per = dict.fromkeys(SPLITS, clips_per_class)
    else:
        per = {s: int(clips_per_class[s]) for s in SPLITS}
    if any(v < 1 for v in per.values()):
        raise ValueError(f"clips_per_class must be >= 1, got {per}")
    return KwsConfig(seed=seed, clips_per_class=tuple((s, per[s]) for s in SPLITS), n_speakers=n_speakers)


def dataset_dir(cache_dir: Path | None, config: KwsConfig) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"kws-v{config.version}-{config.key()}"


def _plan(config: KwsConfig) -> tuple[dict[str, list[Speaker]], dict[str, list[_Clip]]]:
    root = np.random.SeedSequence([config.seed, config.version])
    sp_seq, split_seq, *clip_seqs = root.spawn(2 + len(SPLITS))
    speakers = make_speakers(config.n_speakers, np.random.default_rng(sp_seq))
    by_split = split_speakers(speakers, np.random.default_rng(split_seq))
    plans: dict[str, list[_Clip]] = {}
    for split, seq in zip(SPLITS, clip_seqs, strict=True):
        rng = np.random.default_rng(seq)
        ids = np.array([sp.speaker_id for sp in by_split[split]])
        n = config.per_class(split)
        labels = np.repeat(np.arange(len(CLASS_NAMES)), n)
        labels = labels[rng.permutation(labels.size)]
        spk = rng.choice(ids, size=labels.size)
        seeds = rng.integers(0, 2**63 - 1, size=labels.size)
        silence = CLASS_NAMES.index(SILENCE)
        plans[split] = [
            _Clip(int(lab), -1 if lab == silence else int(s), int(sd))
            for lab, s, sd in zip(labels, spk, seeds, strict=True)
        ]
    return by_split, plans


def generate_kws(
    cache_dir: Path | None = None,
    seed: int = 0,
    clips_per_class: int | Mapping[str, int] | None = None,
    *,
    n_speakers: int = DEFAULT_N_SPEAKERS,
    n_workers: int = 2,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Synthesise all three splits into the cache (no-op when already there); returns their folder.

    The folder holds ``train.npz``, ``val.npz``, ``test.npz`` (un-normalised log-mel
    ``log_mel`` float16, ``labels``, ``speaker_ids``)
    and ``manifest.json`` (config, class names, counts, speakers per split, generation time).
    """
    config = make_config(seed, clips_per_class, n_speakers)
    out = dataset_dir(cache_dir, config)
    if (out / "manifest.json").exists() and not force:
        return out
    from tqdm import tqdm

    t0 = time.perf_counter()
    by_split, plans = _plan(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".kws-tmp-", dir=out.parent))
    try:
        tasks, owners = [], []
        for split in SPLITS:
            clips = plans[split]
            for c0 in range(0, len(clips), CHUNK_CLIPS):
                bank_seed = clips[c0].seed ^ 0x5EED
                tasks.append((by_split[split], clips[c0 : c0 + CHUNK_CLIPS], bank_seed))
                owners.append((split, c0))
        feats = {s: np.zeros((len(plans[s]), *DEFAULT_SPEC.input_shape), dtype=np.float16) for s in SPLITS}
        total = sum(len(p) for p in plans.values())
        with (
            ThreadPoolExecutor(max(1, n_workers)) as pool,
            tqdm(total=total, desc="kws clips", unit="clip", disable=not progress) as bar,
        ):
            futures = [pool.submit(_run_chunk, tmp_root, i, *task) for i, task in enumerate(tasks)]
            for (split, c0), fut in zip(owners, futures, strict=True):
                chunk = fut.result()
                feats[split][c0 : c0 + chunk.shape[0]] = chunk
                bar.update(chunk.shape[0])
        data_dir = tmp_root / "data"
        data_dir.mkdir()
        for split in SPLITS:
            np.savez(
                data_dir / f"{split}.npz",
                log_mel=feats[split],
                labels=np.array([c.label for c in plans[split]], dtype=np.int64),
                speaker_ids=np.array([c.speaker_id for c in plans[split]], dtype=np.int32),
            )
        manifest = {
            "config": asdict(config),
            "class_names": list(CLASS_NAMES),
            "feature_spec": DEFAULT_SPEC.as_dict(),
            "counts": {s: len(plans[s]) for s in SPLITS},
            "speakers": {s: [sp.speaker_id for sp in by_split[s]] for s in SPLITS},
            "generation_s": round(time.perf_counter() - t0, 2),
        }
        (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if force and out.exists():
            shutil.rmtree(out)
        try:
            os.replace(data_dir, out)
        except OSError:
            if not (out / "manifest.json").exists():  # lost a race to another generator: fine
                raise
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return out


def load_kws_split(
    split: str,
    cache_dir: Path | None = None,
    seed: int = 0,
    clips_per_class: int | Mapping[str, int] | None = None,
    *,
    n_speakers: int = DEFAULT_N_SPEAKERS,
    n_workers: int = 2,
    progress: bool = True,
) -> KwsSplit:
    """One split with its speaker ids; generates the dataset on first use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    config = make_config(seed, clips_per_class, n_speakers)
    folder = generate_kws(
        cache_dir, seed, clips_per_class, n_speakers=n_speakers, n_workers=n_workers, progress=progress
    )
    try:
        with np.load(folder / f"{split}.npz", allow_pickle=False) as z:
            features = normalize(z["log_mel"])
            labels = z["labels"].astype(np.int64)
            speaker_ids = z["speaker_ids"].astype(np.int32)
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"cached dataset {folder} is unreadable ({e}); delete it to regenerate") from e
    expected = config.per_class(split) * len(CLASS_NAMES)
    if features.shape != (expected, *DEFAULT_SPEC.input_shape) or labels.shape != (expected,):
        raise DatasetError(f"cached dataset {folder} has unexpected shapes; delete it to regenerate")
    return KwsSplit(split, features, labels, speaker_ids, CLASS_NAMES)


def load_kws(
    split: str,
    cache_dir: Path | None = None,
    seed: int = 0,
    clips_per_class: int | Mapping[str, int] | None = None,
    *,
    n_speakers: int = DEFAULT_N_SPEAKERS,
    n_workers: int = 2,
    progress: bool = True,
) -> tuple[NDArray[np.float32], NDArray[np.int64], tuple[str, ...]]:
    """``(features float32 (N, 1, 40, 49), labels int64 (N,), class_names)`` of one split.

    ``split`` is "train", "val" or "test"; ``clips_per_class`` an int for every split or a mapping
    per split (default :data:`DEFAULT_CLIPS_PER_CLASS`). Generated into ``cache_dir`` on first use.
    """
    s = load_kws_split(
        split, cache_dir, seed, clips_per_class, n_speakers=n_speakers, n_workers=n_workers, progress=progress
    )
    return s.features, s.labels, s.class_names


def cli_data_kws(
    cache_dir: Path | None = None,
    seed: int = 0,
    clips_per_class: int | None = None,
    n_workers: int = 2,
    force: bool = False,
) -> str:
    """Body of ``cimcal data kws``: generate (or find) the dataset; returns a one-paragraph summary."""
    t0 = time.perf_counter()
    folder = generate_kws(cache_dir, seed, clips_per_class, n_workers=n_workers, force=force)
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = ", ".join(f"{s} {n}" for s, n in manifest["counts"].items())
    n_spk = ", ".join(f"{s} {len(v)}" for s, v in manifest["speakers"].items())
    return (
        f"KWS dataset at {folder}\n"
        f"  clips: {counts} ({len(CLASS_NAMES)} balanced classes: {', '.join(CLASS_NAMES)})\n"
        f"  speakers (disjoint): {n_spk}\n"
        f"  generated in {manifest['generation_s']} s; this call took {time.perf_counter() - t0:.1f} s"
    )
