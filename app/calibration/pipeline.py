"""The stable facade the service and the batch jobs call (documented in docs/calibration.md).

Per die::

    char = characterize(driver, budget=DEFAULT_BUDGET, rng=seed)        # on the tester
    comp = compensate(ctx, char.signature, ecid)                         # off the tester, pure compute
    func = functional_test(driver, comp.image_bytes, features, labels)   # on the tester
    hard_bin, soft_bin, label = grade(func.accuracy, calibratable=comp.calibratable)

Per model, once: ``ctx = ModelContext.build(program, calib_features)`` (a few seconds for the
reference model); ``ctx.to_bytes()`` / ``ModelContext.from_bytes(data, program)`` store it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from app.calibration.activations import ActivationStats, program_fingerprint
from app.calibration.characterize import (
    DEFAULT_BUDGET,
    CharacterizationConfig,
    CharacterizationResult,
)
from app.calibration.characterize import characterize as _characterize
from app.calibration.compensate import (
    ALGORITHM_VERSION,
    CompensationConfig,
    CompensationOutput,
    compensate_image,
    compensate_images,
)
from app.calibration.functional import (
    GRADE_TABLE,
    FunctionalResult,
    Grade,
    calibratable,
    functional_test,
    grade,
)
from app.calibration.signature import SIGNATURE_VERSION, Signature, SignatureFormatError
from app.calibration.transient import DEFAULT_ATTEMPTS
from hardware.chip import ChipGeometry, ImageHeader, NetworkProgram, WeightImage, encode_image
from hardware.driver import Driver

__all__ = [
    "ALGORITHM_VERSION",
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BUDGET",
    "GRADE_TABLE",
    "SIGNATURE_VERSION",
    "CharacterizationConfig",
    "CharacterizationResult",
    "CompensationConfig",
    "CompensationResult",
    "FunctionalResult",
    "Grade",
    "ModelContext",
    "Signature",
    "SignatureFormatError",
    "characterize",
    "compensate",
    "compensate_many",
    "functional_test",
    "grade",
]


def characterize(
    driver: Driver,
    budget: int = DEFAULT_BUDGET,
    rng: np.random.Generator | int | None = None,
    *,
    config: CharacterizationConfig | None = None,
) -> CharacterizationResult:
    """Measure the signature of the die under the probe (see :mod:`app.calibration.characterize`).

    ``budget`` is in read vectors per die; a transient driver error retries the one call
    (``config.attempts`` tries), then propagates (retry the die).
    """
    return _characterize(driver, budget=budget, rng=rng, config=config)


@dataclass(frozen=True)
class ModelContext:
    """Everything compensation needs about one model: the program and its activation statistics.

    Built once per model (``build``: runs the ideal chip on the calibration features) and shared by
    every die; serializable (``to_bytes``) so a service can cache it next to the model.
    """

    program: NetworkProgram
    stats: ActivationStats

    @property
    def geometry(self) -> ChipGeometry:
        return self.stats.geometry

    @property
    def model_sha256(self) -> str:
        return self.stats.program_sha256

    @classmethod
    def build(
        cls,
        program: NetworkProgram,
        calib_features: NDArray[np.float32],
        *,
        geometry: ChipGeometry | None = None,
        seed: int = 0,
    ) -> ModelContext:
        """Activation statistics of ``program`` on ``calib_features`` (N, C, H, W) float32."""
        return cls(
            program, ActivationStats.from_program(program, calib_features, geometry=geometry, seed=seed)
        )

    def to_bytes(self) -> bytes:
        """The statistics (the program itself is stored by the model registry)."""
        return self.stats.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes, program: NetworkProgram) -> ModelContext:
        """Load stored statistics; raises ``StatsFormatError`` if they belong to another program."""
        return cls(program, ActivationStats.from_bytes(data, program))


@dataclass(frozen=True)
class CompensationResult:
    """One die's weight image for one model.

    image / image_bytes     : the image and its encoding (what ``program_image`` takes)
    image_sha256            : hex digest of image_bytes
    predicted_agreement     : mean predicted agreement of the binary activations with the ideal
                              chip on the calibration patches (0..1), per layer in layer_agreement
    algorithm_version       : :data:`ALGORITHM_VERSION` (also in the image header)
    compute_s               : host seconds
    calibratable / reason   : False when the die cannot be repaired (bin 11)
    """

    image: WeightImage
    image_bytes: bytes
    image_sha256: str
    predicted_agreement: float
    layer_agreement: dict[str, float]
    algorithm_version: str
    compute_s: float
    replicas: int
    rerouted_cols: int
    unrepaired_dead_cols: int
    calibratable: bool
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def compensate(
    ctx: ModelContext,
    signature: Signature,
    ecid: str,
    signature_hash: str | None = None,
    *,
    config: CompensationConfig | None = None,
) -> CompensationResult:
    """The weight image of ``ctx``'s model for the die of ``signature`` (deterministic, no I/O).

    ``signature_hash`` defaults to ``signature.sha256``; it is recorded in the image header.
    """
    header = ImageHeader(
        ecid=ecid,
        model_name=ctx.program.name,
        model_version=ctx.program.version,
        signature_hash=signature_hash if signature_hash is not None else signature.sha256,
        algorithm_version=ALGORITHM_VERSION,
    )
    return _result(signature, compensate_image(ctx.program, ctx.stats, signature, header, config))


def compensate_many(
    ctx: ModelContext,
    signatures: Sequence[Signature],
    ecids: Sequence[str],
    signature_hashes: Sequence[str],
    *,
    config: CompensationConfig | None = None,
    device: str | None = None,
) -> list[CompensationResult]:
    """:func:`compensate` for many dies at once (a lot's stored signatures): the same images, with the
    threshold searches batched over dies (torch on ``device``: None or "cpu", or "cuda")."""
    headers = [
        ImageHeader(ecid, ctx.program.name, ctx.program.version, sha, ALGORITHM_VERSION)
        for ecid, sha in zip(ecids, signature_hashes, strict=True)
    ]
    outs = compensate_images(ctx.program, ctx.stats, signatures, headers, config, device=device)
    return [_result(sig, out) for sig, out in zip(signatures, outs, strict=True)]


def _result(signature: Signature, out: CompensationOutput) -> CompensationResult:
    blob = encode_image(out.image)
    g = signature.geometry
    ok, why = calibratable(
        signature.n_dead_cols,
        signature.n_stuck_cells,
        out.unrepaired_dead_cols,
        n_cols=g.n_macros * g.phys_cols,
        n_cells=g.n_macros * g.rows * g.phys_cols,
    )
    return CompensationResult(
        image=out.image,
        image_bytes=blob,
        image_sha256=hashlib.sha256(blob).hexdigest(),
        predicted_agreement=out.predicted_agreement,
        layer_agreement=out.layer_agreement,
        algorithm_version=ALGORITHM_VERSION,
        compute_s=out.compute_s,
        replicas=out.replicas,
        rerouted_cols=out.rerouted_cols,
        unrepaired_dead_cols=out.unrepaired_dead_cols,
        calibratable=ok,
        reason=why,
        notes=out.notes,
    )


def model_fingerprint(program: NetworkProgram) -> str:
    """SHA-256 of a program's topology, weights and thresholds."""
    return program_fingerprint(program)
