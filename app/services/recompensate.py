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
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.calibration.pipeline import ModelContext, Signature, SignatureFormatError, compensate_many
from app.db.repositories import audit, images, lots, models, signatures
from app.db.repositories.images import LotDie
from app.db.session import session_scope
from app.errors import ConflictError, InvalidInputError, NotFoundError
from app.services.images import ImageStore
from app.services.runtime import ModelRuntime, ModelRuntimes, runtime_for
from hardware.chip import NetworkProgram

log = logging.getLogger(__name__)

DEFAULT_BATCH_DIES = 64
MAX_BATCH_DIES = 4096
MAX_WORKERS = 64


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
    workers: int = 1,
    actor: str = "system",
    progress: Callable[[int, int], None] | None = None,
) -> LotCompensation:
    """Compute and store the images of every characterized die of ``lot_id`` for ``model_ref``.

    ``device`` None or "cpu": the CPU; "cuda": the GPU (an error if torch sees none). ``workers``:
    processes computing batches side by side (CPU only; each with one torch thread), while this
    process stores the results in order. ``progress`` is called with (dies done, dies to do) after
    each batch.
    """
    t0 = time.perf_counter()
    if not 1 <= batch_dies <= MAX_BATCH_DIES:
        raise InvalidInputError(
            f"batch of {batch_dies} dies: expected 1..{MAX_BATCH_DIES}", code="invalid_batch"
        )
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidInputError(f"{workers} workers: expected 1..{MAX_WORKERS}", code="invalid_workers")
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
    batches = [pending[i : i + batch_dies] for i in range(0, len(pending), batch_dies)]
    computed = uncalibratable = 0
    compute_s = 0.0
    with _computer(runtime, dev, workers if dev == "cpu" else 1) as compute:
        for batch, results in compute(factory, batches):
            _store(factory, store, batch, results, model_id, model_ref, lot_id, dev, actor)
            computed += len(batch)
            uncalibratable += sum(not r.calibratable for r in results)
            compute_s += sum(r.compute_s for r in results)
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


# ------------------------------------------------------------------------------------ the numerics
@dataclass(frozen=True)
class _Computed:
    """One die's image as a worker hands it back (no arrays: the encoded bytes and the facts)."""

    image_bytes: bytes
    image_sha256: str
    algorithm_version: str
    predicted_agreement: float
    compute_s: float
    calibratable: bool
    reason: str
    error: str = ""


_WORKER: dict[str, Any] = {}


def _init_worker(program: NetworkProgram, stats_bytes: bytes, device: str) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: intra-op threads would only contend
    _WORKER.update(ctx=ModelContext.from_bytes(stats_bytes, program), device=device)


def _worker_batch(jobs: Sequence[tuple[str, str, bytes]]) -> list[_Computed]:
    return _compute_batch(_WORKER["ctx"], _WORKER["device"], jobs)


def _compute_batch(ctx: ModelContext, device: str, jobs: Sequence[tuple[str, str, bytes]]) -> list[_Computed]:
    """(ecid, signature sha256, signature bytes) -> images."""
    sigs = []
    for ecid, _, blob in jobs:
        try:
            sigs.append(Signature.from_bytes(blob))
        except SignatureFormatError as e:
            return [
                _Computed(
                    b"", "", "", 0.0, 0.0, False, "", error=f"stored signature of {ecid} is unreadable: {e}"
                )
            ]
    outs = compensate_many(ctx, sigs, [j[0] for j in jobs], [j[1] for j in jobs], device=device)
    return [
        _Computed(
            o.image_bytes,
            o.image_sha256,
            o.algorithm_version,
            o.predicted_agreement,
            o.compute_s,
            o.calibratable,
            o.reason,
        )
        for o in outs
    ]


Compute = Callable[
    [sessionmaker[Session], Sequence[Sequence[LotDie]]], Iterator[tuple[Sequence[LotDie], list[_Computed]]]
]


@contextmanager
def _computer(runtime: ModelRuntime, device: str, workers: int) -> Iterator[Compute]:
    """A function from batches to (batch, images) in batch order, in this process or in ``workers``
    processes (at most two batches each in flight)."""

    def jobs_of(factory: sessionmaker[Session], batch: Sequence[LotDie]) -> list[tuple[str, str, bytes]]:
        with session_scope(factory, read_only=True) as s:
            blobs = signatures.blobs(s, [d.signature_id for d in batch])
        return [(d.ecid, d.signature_sha256, blobs[d.signature_id]) for d in batch]

    if workers == 1:
        ctx = ModelContext(runtime.program, runtime.stats)

        def inline(
            factory: sessionmaker[Session], batches: Sequence[Sequence[LotDie]]
        ) -> Iterator[tuple[Sequence[LotDie], list[_Computed]]]:
            for batch in batches:
                yield batch, _checked(_compute_batch(ctx, device, jobs_of(factory, batch)))

        yield inline
        return
    init = (runtime.program, runtime.stats.to_bytes(), device)
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=init
    ) as pool:

        def pooled(
            factory: sessionmaker[Session], batches: Sequence[Sequence[LotDie]]
        ) -> Iterator[tuple[Sequence[LotDie], list[_Computed]]]:
            in_flight: deque[tuple[Sequence[LotDie], Future[list[_Computed]]]] = deque()
            for batch in batches:
                in_flight.append((batch, pool.submit(_worker_batch, jobs_of(factory, batch))))
                if len(in_flight) >= 2 * workers:
                    done, future = in_flight.popleft()
                    yield done, _checked(future.result())
            while in_flight:
                done, future = in_flight.popleft()
                yield done, _checked(future.result())

        yield pooled


def _checked(results: list[_Computed]) -> list[_Computed]:
    if results and results[0].error:
        raise ConflictError(results[0].error, code="signature_corrupt")
    return results


def _store(
    factory: sessionmaker[Session],
    store: ImageStore,
    batch: Sequence[LotDie],
    results: Sequence[_Computed],
    model_id: int,
    model_ref: str,
    lot_id: str,
    device: str,
    actor: str,
) -> None:
    """The batch's images into the store (written side by side, hashed by the workers), then their
    rows (one executemany INSERT) and one audit row in one transaction."""
    shas = store.put_many([r.image_bytes for r in results], [r.image_sha256 for r in results])
    rows = [
        {
            "die_id": d.die_id,
            "model_id": model_id,
            "signature_id": d.signature_id,
            "ecid": d.ecid,
            "signature_sha256": d.signature_sha256,
            "content_sha256": sha,
            "size_bytes": len(r.image_bytes),
            "algorithm_version": r.algorithm_version,
            "predicted_agreement": r.predicted_agreement,
            "compute_s": r.compute_s,
            "calibratable": r.calibratable,
            "reason": r.reason or None,
            "provenance_id": d.provenance_id,
        }
        for d, r, sha in zip(batch, results, shas, strict=True)
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
