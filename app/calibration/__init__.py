"""Post-silicon calibration of CIM chips: characterize a die, compensate a model for it, test it.

Pure numerics (numpy, scipy, torch through :mod:`hardware.chip`); talks to a die only through
:class:`hardware.driver.Driver`. The stable entry points are in :mod:`app.calibration.pipeline`
(see docs/calibration.md).
"""

from app.calibration.pipeline import (
    ALGORITHM_VERSION,
    DEFAULT_BUDGET,
    GRADE_TABLE,
    SIGNATURE_VERSION,
    CharacterizationResult,
    CompensationResult,
    FunctionalResult,
    Grade,
    ModelContext,
    Signature,
    SignatureFormatError,
    characterize,
    compensate,
    functional_test,
    grade,
)

__all__ = [
    "ALGORITHM_VERSION",
    "DEFAULT_BUDGET",
    "GRADE_TABLE",
    "SIGNATURE_VERSION",
    "CharacterizationResult",
    "CompensationResult",
    "FunctionalResult",
    "Grade",
    "ModelContext",
    "Signature",
    "SignatureFormatError",
    "characterize",
    "compensate",
    "functional_test",
    "grade",
]
