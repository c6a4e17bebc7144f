"""Per-die hardware steps: characterize (station), weight images (station), functional test (station)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
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
from app.db.tables import Role
from app.errors import InvalidInputError
from app.services import calibration
from app.services.serving import ServingCache

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

    A station may ask for a `budget` of at most 262,144 read vectors (`CIMCAL_MAX_STATION_BUDGET`;
    422 `budget_over_limit` beyond); an admin up to the schema's maximum.

    Returns the signature hash, what it cost (reads, tester seconds) and the defects found. The
    history of signatures is kept; exactly one is current. Retry-safe with `Idempotency-Key`.
    """

    if (
        body.budget is not None
        and principal.role is Role.station
        and body.budget > settings.max_station_budget
    ):
        raise InvalidInputError(
            f"a station may ask for at most {settings.max_station_budget} read vectors per die",
            code="budget_over_limit",
            details={"budget": body.budget, "max": settings.max_station_budget, "role": principal.role.value},
        )

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


IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "example": "CIMCALWI... (binary weight image)",
            }
        },
        "description": "The weight image (docs/weight-image.md); HEAD: its headers only",
    },
    304: {"description": "Not modified: If-None-Match names the current image (or is `*`)"},
    **HARDWARE_ERRORS,
}
_ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')


def none_match(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: does ``If-None-Match`` match the current representation? ``*`` matches any,
    else a list of entity tags compared weakly (``W/"x"`` matches ``"x"``)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(f'"{m.group(1)}"' == opaque for m in _ENTITY_TAG.finditer(if_none_match))


@router.get("/chips/{ecid}/image", response_class=Response, responses=IMAGE_RESPONSES)
@router.head("/chips/{ecid}/image", response_class=Response, responses=IMAGE_RESPONSES)
async def get_image(
    request: Request,
    ecid: EcidPath,
    model: ModelQuery,
    principal: StationAccess,
    if_none_match: Annotated[
        str | None,
        Header(max_length=8192, description='ETags from earlier downloads (`"<sha256>"`, `W/"..."`, `*`).'),
    ] = None,
) -> Response:
    """The die's compensated weight image for a model, computed from its current signature on the first
    request and then served from the content-addressed store: the same request returns the same bytes.
    `ETag` is the image's SHA-256; send it back in `If-None-Match` to get 304 (weak comparison, a list
    of tags, or `*`). `HEAD` answers the same headers without the body.

    A repeated request is answered from memory (docs/api-performance.md): after the die gets a new
    signature, the next request computes and serves the new image."""
    state = request.app.state  # not dependencies: each one costs, and this is the hot path
    cache: ServingCache = state.serving_cache
    served = cache.image(ecid, model)
    if served is None:
        ttl_s = state.settings.serving_cache_ttl_s
        served = await run_in_threadpool(
            cache.compute_image, state.session_factory, state.runtimes, ecid, model, principal.actor, ttl_s
        )
    headers = {"ETag": served.etag, "Cache-Control": "private, max-age=0, must-revalidate"}
    if if_none_match is not None and none_match(if_none_match, served.etag):
        return Response(status_code=304, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{served.filename}"'
    if request.method == "HEAD":
        headers["Content-Length"] = str(served.size_bytes)
        return Response(media_type="application/octet-stream", headers=headers)
    data = cache.cached_bytes(served.content_sha256)
    if data is None:
        data = await run_in_threadpool(cache.load_bytes, served)
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
