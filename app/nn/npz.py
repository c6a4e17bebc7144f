"""The container both file formats share (models and datasets): a numpy ``.npz`` read without
pickles, with a JSON manifest stored as a uint8 array under ``manifest.json``, and written with
fixed zip timestamps so that the same content always gives the same bytes."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

MANIFEST_KEY = "manifest.json"


def write_npz(
    manifest: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]], *, compress: bool = True
) -> bytes:
    """``manifest`` (sorted-key JSON) first, then ``arrays`` in the given order; reproducible bytes.

    ``compress=False`` stores the members as they are (float samples hardly deflate, and storing
    is an order of magnitude faster)."""
    raw = json.dumps(manifest, sort_keys=True, indent=1).encode()
    members: dict[str, NDArray[Any]] = {MANIFEST_KEY: np.frombuffer(raw, dtype=np.uint8)}
    members.update(arrays)
    buf = io.BytesIO()
    # zip entries carry a timestamp; write them with a fixed one so bytes are reproducible
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for key, arr in members.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def read_npz(
    data: bytes, *, max_bytes: int, max_uncompressed: int, error: type[ValueError], what: str
) -> tuple[Any, dict[str, NDArray[Any]]]:
    """(parsed manifest, the other arrays) of an ``.npz``; every failure raises ``error``.

    Sizes are checked before anything is decompressed: the file against ``max_bytes``, the sum of
    the members' declared sizes against ``max_uncompressed``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(f"{what} data must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise error(f"not a {what} file (.npz archive): {e}") from e
    if sum(i.file_size for i in infos) > max_uncompressed:
        raise error(f"{what} arrays exceed {max_uncompressed} bytes uncompressed")
    arrays: dict[str, NDArray[Any]] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for key in z.files:
                arrays[key] = np.asarray(z[key])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise error(f"{what} archive is unreadable or corrupted: {e}") from e
    if MANIFEST_KEY not in arrays:
        raise error(f"{what} archive has no {MANIFEST_KEY}")
    raw = arrays.pop(MANIFEST_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise error(f"{MANIFEST_KEY} must be a 1-D uint8 array")
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise error(f"{MANIFEST_KEY} is not valid JSON: {e}") from e
    return manifest, arrays
