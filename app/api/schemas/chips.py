"""Characterization, weight images and functional tests of one die."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.schemas.common import with_example
from app.api.schemas.provenance import PROVENANCE_EXAMPLE, ProvenanceOut
from app.services.calibration import CharacterizeOutcome, ImageOutcome, TestOutcome

ECID_EXAMPLE = "LOT0001-W01-X+001Y+000"
SHA_EXAMPLE = "3f7a1c0e9b5d4a2c8e6f1b3d5a7c9e0f2b4d6a8c0e1f3b5d7a9c2e4f6b8d0a1c"


class CharacterizeIn(BaseModel):
    model_config = with_example({"force": True})

    force: bool = Field(
        True, description="Measure again even when the die has a current signature (false: reuse it)."
    )
    budget: int | None = Field(
        None, ge=1024, le=4_194_304, description="Read vectors for the whole die (default: the station's)."
    )


class CharacterizeOut(BaseModel):
    model_config = with_example(
        {
            "ecid": ECID_EXAMPLE,
            "signature_sha256": SHA_EXAMPLE,
            "version": 1,
            "created": True,
            "reads": 128,
            "read_vectors": 131072,
            "writes": 64,
            "tester_s": 0.39,
            "n_dead_cols": 1,
            "n_stuck_cells": 3,
            "offset_spread_mac": 0.93,
            "signature_bytes": 52311,
            "summary": {"gain_spread": 0.031},
            "retries": 0,
            "provenance": PROVENANCE_EXAMPLE,
        }
    )

    ecid: str
    signature_sha256: str
    version: int
    created: bool = Field(description="False when an existing current signature was returned (force=false).")
    reads: int
    read_vectors: int
    writes: int
    tester_s: float = Field(description="Tester seconds this characterization cost.")
    n_dead_cols: int
    n_stuck_cells: int
    offset_spread_mac: float
    signature_bytes: int
    summary: dict[str, float | int]
    retries: int = Field(description="Driver calls repeated after a timeout or a lost contact.")
    provenance: ProvenanceOut | None = Field(description="The tester that measured the signature.")

    @classmethod
    def of(cls, o: CharacterizeOutcome) -> CharacterizeOut:
        return cls(
            ecid=o.ecid,
            signature_sha256=o.signature_sha256,
            version=o.version,
            created=o.created,
            reads=o.reads,
            read_vectors=o.read_vectors,
            writes=o.writes,
            tester_s=o.tester_s,
            n_dead_cols=o.n_dead_cols,
            n_stuck_cells=o.n_stuck_cells,
            offset_spread_mac=o.offset_spread_mac,
            signature_bytes=o.signature_bytes,
            summary=o.summary,
            retries=o.retries,
            provenance=None if o.provenance is None else ProvenanceOut.model_validate(o.provenance),
        )


class ImageMeta(BaseModel):
    model_config = with_example(
        {
            "ecid": ECID_EXAMPLE,
            "model": "kws-bnn@1.0",
            "sha256": SHA_EXAMPLE,
            "size_bytes": 81234,
            "signature_sha256": SHA_EXAMPLE,
            "algorithm_version": "cimcal-comp-1",
            "predicted_agreement": 0.987,
            "compute_s": 0.21,
        }
    )

    ecid: str
    model: str
    sha256: str = Field(description="SHA-256 of the image bytes (also the ETag of the download).")
    size_bytes: int
    signature_sha256: str = Field(description="The signature the image was compensated from.")
    algorithm_version: str
    predicted_agreement: float | None = Field(
        description="Predicted fraction of binary activations that match the ideal chip on the calibration set."
    )
    compute_s: float

    @classmethod
    def of(cls, o: ImageOutcome) -> ImageMeta:
        return cls(
            ecid=o.ecid,
            model=o.model,
            sha256=o.content_sha256,
            size_bytes=o.size_bytes,
            signature_sha256=o.signature_sha256,
            algorithm_version=o.algorithm_version,
            predicted_agreement=o.predicted_agreement,
            compute_s=o.compute_s,
        )


class FunctionalTestIn(BaseModel):
    model_config = with_example({"model": "kws-bnn@1.0", "force": True})

    model: str = Field(pattern=r"^[^@\s]{1,64}@[^@\s]{1,32}$", description="name@version")
    force: bool = Field(True, description="Test again even when a result for the current image exists.")


class FunctionalTestOut(BaseModel):
    model_config = with_example(
        {
            "ecid": ECID_EXAMPLE,
            "model": "kws-bnn@1.0",
            "accuracy": 0.871,
            "accuracy_uncalibrated": 0.342,
            "hard_bin": 1,
            "soft_bin": 1,
            "bin_label": "pass: grade A",
            "test_time_s": 0.012,
            "n_clips": 240,
            "image_sha256": SHA_EXAMPLE,
            "created": True,
            "retries": 0,
            "provenance": PROVENANCE_EXAMPLE,
        }
    )

    ecid: str
    model: str
    accuracy: float
    accuracy_uncalibrated: float | None
    hard_bin: int
    soft_bin: int
    bin_label: str
    test_time_s: float
    n_clips: int
    image_sha256: str | None
    created: bool
    retries: int = Field(description="Driver calls repeated after a timeout or a lost contact.")
    provenance: ProvenanceOut | None = Field(description="The tester that ran the test.")

    @classmethod
    def of(cls, o: TestOutcome) -> FunctionalTestOut:
        return cls(
            ecid=o.ecid,
            model=o.model,
            accuracy=o.accuracy,
            accuracy_uncalibrated=o.accuracy_uncalibrated,
            hard_bin=o.hard_bin,
            soft_bin=o.soft_bin,
            bin_label=o.bin_label,
            test_time_s=o.test_time_s,
            n_clips=o.n_clips,
            image_sha256=o.image_sha256,
            created=o.created,
            retries=o.retries,
            provenance=None if o.provenance is None else ProvenanceOut.model_validate(o.provenance),
        )
