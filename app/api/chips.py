"""Per-die hardware steps: characterize (station), weight images (station), functional test (station)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query
from fastapi.responses import JSONResponse, Response

from app.api.deps import (
    DriversDep,
    ImageStoreDep,
    RuntimesDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StationAccess,
)
from app.api.idempotency import IdempotencyDep
from app.api.schemas.chips import (
    ECID_EXAMPLE,
    CharacterizeIn,
    CharacterizeOut,
    FunctionalTestIn,
    FunctionalTestOut,
    ImageMeta,
)
from app.api.schemas.common import error_response_doc
from app.services import calibration

router = APIRouter(tags=["chips"])

EcidPath = Annotated[str, Path(max_length=64, examples=[ECID_EXAMPLE])]
ModelQuery = Annotated[
    str, Query(pattern=r"^[^@\s]{1,64}@[^@\s]{1,32}$", description="name@version", examples=["kws-bnn@1.0"])
]

HARDWARE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: error_response_doc("Unknown die or model", "not_found", "no die 'LOT0001-W01-X+099Y+000'"),
    409: error_response_doc(
        "The die is faulty or not characterized", "die_fault", "supply short at power-up"
    ),
    502: error_response_doc("Tester protocol error", "protocol_error", "die rejected the image"),
    503: error_response_doc("Tester not connected or all sites busy", "not_connected", "tester offline"),
    504: error_response_doc("Tester timeout", "hardware_timeout", "read_macro did not complete within 30 s"),
}


@router.post(
    "/dies/{ecid}/characterize", status_code=201, response_model=CharacterizeOut, responses=HARDWARE_ERRORS
)
def characterize(
    ecid: EcidPath,
    session: SessionDep,
    principal: StationAccess,
    idem: IdempotencyDep,
    drivers: DriversDep,
    settings: SettingsDep,
    body: Annotated[CharacterizeIn, Body()] = CharacterizeIn(),  # noqa: B008 (an immutable default body)
) -> JSONResponse:
    """Probe the die, measure its signature through the tester and make it the die's current one.

    Returns the signature hash, what it cost (reads, tester seconds) and the defects found. The
    history of signatures is kept; exactly one is current. Retry-safe with `Idempotency-Key`.
    """

    def action() -> CharacterizeOut:
        return CharacterizeOut.of(
            calibration.characterize_die(
                session,
                drivers,
                ecid,
                force=body.force,
                budget=body.budget or settings.characterize_budget,
                actor=principal.actor,
            )
        )

    return idem.respond(body, action)


def _image(
    session: SessionDep,
    factory: SessionFactoryDep,
    runtimes: RuntimesDep,
    store: ImageStoreDep,
    ecid: str,
    model: str,
    actor: str,
) -> calibration.ImageOutcome:
    # Reads in the request's read-only session; the first request stores the image in a short write.
    return calibration.compensate_die(session, runtimes, store, ecid, model, actor=actor, write_db=factory)


@router.get(
    "/chips/{ecid}/image",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": "CIMCALWI... (binary weight image)",
                }
            },
            "description": "The weight image (docs/weight-image.md)",
        },
        304: {"description": "Not modified: the If-None-Match ETag is the current image"},
        **HARDWARE_ERRORS,
    },
)
def get_image(
    ecid: EcidPath,
    model: ModelQuery,
    session: SessionDep,
    factory: SessionFactoryDep,
    principal: StationAccess,
    runtimes: RuntimesDep,
    store: ImageStoreDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The die's compensated weight image for a model, computed from its current signature on the first
    request and then served from the content-addressed store: the same request returns the same bytes.
    `ETag` is the image's SHA-256; send it back in `If-None-Match` to get 304."""
    outcome = _image(session, factory, runtimes, store, ecid, model, principal.actor)
    etag = f'"{outcome.content_sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=0, must-revalidate"}
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")} | {"*"}:
        return Response(status_code=304, headers=headers)
    data = calibration.image_bytes(store, outcome)
    headers["Content-Disposition"] = f'attachment; filename="{ecid}_{model.replace("@", "_")}.cimg"'
    return Response(data, media_type="application/octet-stream", headers=headers)


@router.get("/chips/{ecid}/image/meta", responses=HARDWARE_ERRORS)
def get_image_meta(
    ecid: EcidPath,
    model: ModelQuery,
    session: SessionDep,
    factory: SessionFactoryDep,
    principal: StationAccess,
    runtimes: RuntimesDep,
    store: ImageStoreDep,
) -> ImageMeta:
    """Provenance of the die's image for a model: signature hash, algorithm version, predicted quality."""
    return ImageMeta.of(_image(session, factory, runtimes, store, ecid, model, principal.actor))


@router.post(
    "/dies/{ecid}/functional-test",
    status_code=201,
    response_model=FunctionalTestOut,
    responses=HARDWARE_ERRORS,
)
def functional_test(
    ecid: EcidPath,
    body: FunctionalTestIn,
    session: SessionDep,
    principal: StationAccess,
    idem: IdempotencyDep,
    drivers: DriversDep,
    runtimes: RuntimesDep,
    store: ImageStoreDep,
    settings: SettingsDep,
) -> JSONResponse:
    """Program the die's image, run the held-out test clips through the die, store accuracy and bins
    (soft bins 1-9 pass, 1 best; see docs/calibration.md for the grading table)."""

    def action() -> FunctionalTestOut:
        return FunctionalTestOut.of(
            calibration.functional_test_die(
                session,
                drivers,
                runtimes,
                store,
                settings,
                ecid,
                body.model,
                force=body.force,
                actor=principal.actor,
            )
        )

    return idem.respond(body, action)
