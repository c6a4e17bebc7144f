"""Re-compensating a characterized lot for a model: no tester time, the signatures are stored.

The lot's dies that have a current signature and no image of it for the model are compensated in
batches (:func:`app.calibration.compensate.compensate_images`: one batched threshold search per
column tile, torch on the CPU or on a GPU when asked). Each batch is one short transaction: its
images go to the content-addressed store first, then their rows and one audit row are written
together, so an interrupted run leaves whole batches and a rerun computes only the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.calibration.pipeline import ModelContext, Signature, SignatureFormatError, compensate_many
from app.db.repositories import audit, images, lots, models, signatures
from app.db.repositories.images import LotDie
from app.db.session import session_scope
from app.db.tables import Image
from app.errors import ConflictError, InvalidInputError, NotFoundError
from app.services.images import ImageStore
from app.services.runtime import ModelRuntime, ModelRuntimes, runtime_for

log = logging.getLogger(__name__)

DEFAULT_BATCH_DIES = 64
MAX_BATCH_DIES = 4096


@dataclass(frozen=True)
class LotCompensation:
    """What one re-compensation run did.

    dies: the lot's dies; computed: images computed and stored now; already: dies whose current
    signature had an image for the model already; not_characterized: dies without a signature;
    uncalibratable: of the computed, those the spares cannot repair (bin 11 when tested);
    compute_s: host seconds of the numerics; wall_s: the whole run, database and store included.
    """

    lot_id: str
    model: str
    dies: int
    computed: int
    already: int
    not_characterized: int
    uncalibratable: int
    compute_s: float
    wall_s: float
    device: str

    @property
    def dies_per_s(self) -> float:
        return self.computed / self.wall_s if self.wall_s > 0 else 0.0


def _parse_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise InvalidInputError(f"model reference {ref!r}: expected name@version", code="invalid_model_ref")
    return name, version


def recompensate_lot(
    factory: sessionmaker[Session],
    runtimes: ModelRuntimes,
    store: ImageStore,
    lot_id: str,
    model_ref: str,
    *,
    batch_dies: int = DEFAULT_BATCH_DIES,
    device: str | None = None,
    actor: str = "system",
    progress: Callable[[int, int], None] | None = None,
) -> LotCompensation:
    """Compute and store the images of every characterized die of ``lot_id`` for ``model_ref``.

    ``device`` None or "cpu": the CPU; "cuda": the GPU (an error if torch sees none). ``progress``
    is called with (dies done, dies to do) after each batch.
    """
    t0 = time.perf_counter()
    if not 1 <= batch_dies <= MAX_BATCH_DIES:
        raise InvalidInputError(
            f"batch of {batch_dies} dies: expected 1..{MAX_BATCH_DIES}", code="invalid_batch"
        )
    dev = _device(device)
    name, version = _parse_ref(model_ref)
    with session_scope(factory, read_only=True) as s:
        if lots.get(s, lot_id) is None:
            raise NotFoundError(f"no lot {lot_id!r}")
        model = models.get(s, name, version, with_blob=True)
        if model is None:
            raise NotFoundError(f"no model {model_ref!r}", code="model_not_found")
        model_id = model.id
        pending, not_characterized = images.lot_pending(s, lot_id, model_id)
        n_dies = lots.count_dies(s, lot_id)
        runtime = runtime_for(s, runtimes, model)
    computed = uncalibratable = 0
    compute_s = 0.0
    for start in range(0, len(pending), batch_dies):
        batch = pending[start : start + batch_dies]
        n_bad, batch_s = _batch(factory, runtime, store, batch, model_id, model_ref, lot_id, dev, actor)
        computed += len(batch)
        uncalibratable += n_bad
        compute_s += batch_s
        if progress is not None:
            progress(computed, len(pending))
    wall = time.perf_counter() - t0
    log.info("re-compensated %d dies of %s for %s in %.1f s on %s", computed, lot_id, model_ref, wall, dev)
    return LotCompensation(
        lot_id=lot_id,
        model=model_ref,
        dies=n_dies,
        computed=computed,
        already=n_dies - not_characterized - len(pending),
        not_characterized=not_characterized,
        uncalibratable=uncalibratable,
        compute_s=compute_s,
        wall_s=wall,
        device=dev,
    )


def _device(device: str | None) -> str:
    import torch

    if device in (None, "cpu"):
        return "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError("device cuda requested but torch sees no GPU", code="no_gpu")
        return "cuda"
    raise InvalidInputError(f"device {device!r}: expected cpu or cuda", code="invalid_device")


def _batch(
    factory: sessionmaker[Session],
    runtime: ModelRuntime,
    store: ImageStore,
    batch: Sequence[LotDie],
    model_id: int,
    model_ref: str,
    lot_id: str,
    device: str,
    actor: str,
) -> tuple[int, float]:
    """Compute, store and record one batch; returns (uncalibratable dies, compute seconds)."""
    with session_scope(factory, read_only=True) as s:
        blobs = signatures.blobs(s, [d.signature_id for d in batch])
    sigs = []
    for d in batch:
        try:
            sigs.append(Signature.from_bytes(blobs[d.signature_id]))
        except SignatureFormatError as e:
            raise ConflictError(
                f"stored signature of {d.ecid} is unreadable: {e}", code="signature_corrupt"
            ) from e
    t0 = time.perf_counter()
    outs = compensate_many(
        ModelContext(runtime.program, runtime.stats),
        sigs,
        [d.ecid for d in batch],
        [d.signature_sha256 for d in batch],
        device=device,
    )
    compute_s = time.perf_counter() - t0
    rows = [
        Image(
            die_id=d.die_id,
            model_id=model_id,
            signature_id=d.signature_id,
            ecid=d.ecid,
            signature_sha256=d.signature_sha256,
            content_sha256=store.put(out.image_bytes),
            size_bytes=len(out.image_bytes),
            algorithm_version=out.algorithm_version,
            predicted_agreement=out.predicted_agreement,
            compute_s=out.compute_s,
            calibratable=out.calibratable,
            reason=out.reason or None,
            provenance_id=d.provenance_id,
        )
        for d, out in zip(batch, outs, strict=True)
    ]
    with session_scope(factory) as s:
        images.add_many(s, rows)
        audit.add(
            s,
            actor=actor,
            action="image.compute_lot",
            target=lot_id,
            details={
                "model": model_ref,
                "dies": len(rows),
                "first": batch[0].ecid,
                "last": batch[-1].ecid,
                "device": device,
            },
        )
    return sum(not out.calibratable for out in outs), compute_s
