from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from hardware.chip import (
    ChipError,
    ChipGeometry,
    ImageFormatError,
    ImageHeader,
    NetworkProgram,
    build_image,
    decode_image,
    encode_image,
    execute_network,
    ideal_readout,
    im2col,
    map_network,
)

HEADER = ImageHeader("LOT1-W01-X+000Y+000", "toy", "1", "ab" * 32, "test-1")


def test_mapping_tiles_rows_and_columns(toy_program: NetworkProgram, geometry: ChipGeometry) -> None:
    tiles = map_network(toy_program, geometry)
    b1 = [t for t in tiles if t.layer == "b1"]
    # 64*9 = 576 rows -> 3 row tiles; 70 channels -> 2 column tiles of 64 and 6.
    assert len(b1) == 6
    assert sorted({(t.row_start, t.n_rows) for t in b1}) == [(0, 256), (256, 256), (512, 64)]
    assert sorted({(t.col_start, t.n_cols) for t in b1}) == [(0, 64), (64, 6)]
    d1 = [t for t in tiles if t.layer == "d1"]
    assert len(d1) == int(np.ceil(70 * 36 / 256))
    assert len({t.macro for t in tiles}) == len(tiles)


def test_mapping_rejects_a_network_larger_than_the_chip(toy_program: NetworkProgram) -> None:
    with pytest.raises(ChipError, match="needs"):
        map_network(toy_program, ChipGeometry(n_macros=4))


def test_image_round_trip_is_exact(toy_program: NetworkProgram, geometry: ChipGeometry) -> None:
    image = build_image(toy_program, geometry, HEADER)
    data = encode_image(image)
    back = decode_image(data)
    assert encode_image(back) == data
    assert np.array_equal(back.macros, image.macros)
    assert np.array_equal(back.col_map, image.col_map)
    assert back.header == HEADER
    assert back.geometry == geometry
    for name, thr in image.thresholds.items():
        assert np.array_equal(back.thresholds[name], thr)
    assert np.array_equal(back.program.layer("fc").arrays["weight"], toy_program.layer("fc").arrays["weight"])
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


def test_image_bytes_are_deterministic(toy_program: NetworkProgram, geometry: ChipGeometry) -> None:
    assert encode_image(build_image(toy_program, geometry, HEADER)) == encode_image(
        build_image(toy_program, geometry, HEADER)
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:40], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b + b"\0", "truncated or padded"),
        (lambda b: b"XXXXXXXX" + b[8:], "not a cimcal weight image"),
        (lambda b: b[:5000] + bytes([b[5000] ^ 0x01]) + b[5001:], "SHA-256 mismatch"),
        (lambda b: b[:-5] + bytes([b[-5] ^ 0x80]) + b[-4:], "SHA-256 mismatch"),
    ],
)
def test_corrupted_images_are_rejected(
    toy_program: NetworkProgram, geometry: ChipGeometry, mutate: Callable[[bytes], bytes], message: str
) -> None:
    data = encode_image(build_image(toy_program, geometry, HEADER))
    with pytest.raises(ImageFormatError, match=message):
        decode_image(mutate(data))


def test_invalid_routing_is_rejected(toy_program: NetworkProgram, geometry: ChipGeometry) -> None:
    col_map = np.tile(np.arange(geometry.cols, dtype=np.int16), (geometry.n_macros, 1))
    col_map[0, 1] = col_map[0, 0]
    with pytest.raises(ChipError, match="two logical columns"):
        build_image(toy_program, geometry, HEADER, col_map=col_map)


def test_ideal_execution_matches_direct_integer_arithmetic(
    toy_program: NetworkProgram, geometry: ChipGeometry
) -> None:
    """With no ADC clipping, the tiled, digitized execution equals the exact binary network."""
    image = build_image(toy_program, geometry, HEADER)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 1, 12, 12)).astype(np.float32)
    wide = ChipGeometry(adc_bits=12)  # no clipping: every partial sum is representable
    wide_image = build_image(toy_program, wide, HEADER)
    logits = execute_network(wide_image, x, ideal_readout(wide_image.macros, wide))

    # Reference: the same network computed without tiles or ADC.
    import torch
    import torch.nn.functional as F

    c0, b1, d1, fc = (toy_program.layer(n) for n in ("c0", "b1", "d1", "fc"))
    h = (
        F.conv2d(
            torch.tensor(x), torch.tensor(c0.arrays["weight"]), torch.tensor(c0.arrays["bias"]), padding=1
        )
        >= 0
    ).float()
    s = F.conv2d(h, torch.tensor(b1.arrays["weight"], dtype=torch.float32), padding=1)
    h = (s >= torch.tensor(b1.arrays["threshold"]).view(1, -1, 1, 1)).float()
    h = F.max_pool2d(h, 2).reshape(5, -1)
    h = (h @ torch.tensor(d1.arrays["weight"], dtype=torch.float32).T >= 0).float()
    ref = (h @ torch.tensor(fc.arrays["weight"]).T).numpy()
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    # The 6-bit ADC clips large partial sums; the default chip still agrees on most predictions.
    default_logits = execute_network(image, x, ideal_readout(image.macros, geometry))
    assert default_logits.shape == (5, 3)


def test_im2col_orders_rows_channel_major() -> None:
    x = np.zeros((1, 2, 3, 3), dtype=np.uint8)
    x[0, 1, 0, 0] = 1
    patches, (ho, wo) = im2col(x, (3, 3), (1, 1), (0, 0))
    assert (ho, wo) == (1, 1)
    assert patches.shape == (1, 18)
    assert np.flatnonzero(patches[0]).tolist() == [9]  # channel 1, kernel row 0, col 0


def test_two_tiles_on_one_macro_are_rejected(toy_program: NetworkProgram, geometry: ChipGeometry) -> None:
    from dataclasses import replace

    image = build_image(toy_program, geometry, HEADER)
    clash = replace(image, tiles=(*image.tiles, replace(image.tiles[0], row_tile=99)))
    with pytest.raises(ChipError, match="share a macro"):
        clash.validate()


def test_cached_first_patches_give_the_same_logits(
    toy_program: NetworkProgram, geometry: ChipGeometry
) -> None:

    image = build_image(toy_program, geometry, ImageHeader("", "toy", "1", "", "t"))
    read = ideal_readout(image.macros, geometry)
    x = np.random.default_rng(9).normal(size=(6, 1, 12, 12)).astype(np.float32)
    seen: list[NDArray[np.uint8]] = []
    ref = execute_network(image, x, read)
    first = execute_network(image, x, read, cache_first_patches=True, tap=lambda n, p: seen.append(p))
    again = execute_network(image, x, read, cache_first_patches=True, tap=lambda n, p: seen.append(p))
    np.testing.assert_array_equal(first, ref)
    np.testing.assert_array_equal(again, ref)
    assert seen[0] is seen[2] and not seen[0].flags.writeable  # the second run reused the patches
    other = x + 1.0  # other features: other patches
    np.testing.assert_array_equal(
        execute_network(image, other, read, cache_first_patches=True), execute_network(image, other, read)
    )


def test_maxpool_equals_a_max_over_each_window() -> None:
    from hardware.chip import _maxpool

    x = np.random.default_rng(1).integers(0, 2, size=(3, 4, 9, 7)).astype(np.uint8)
    for kh, kw in ((2, 2), (3, 2), (1, 3)):
        ho, wo = 9 // kh, 7 // kw
        ref = x[:, :, : ho * kh, : wo * kw].reshape(3, 4, ho, kh, wo, kw).max(axis=(3, 5))
        np.testing.assert_array_equal(_maxpool(x, (kh, kw)), ref)
    f = np.random.default_rng(2).normal(size=(2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(_maxpool(f, (2, 2)), f.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))


def test_im2col_equals_the_strided_window_copy() -> None:
    from numpy.lib.stride_tricks import sliding_window_view

    from hardware.chip import im2col

    gen = np.random.default_rng(4)
    for shape, kernel, stride, padding in (
        ((3, 5, 9, 7), (3, 3), (1, 1), (1, 1)),
        ((2, 4, 10, 11), (3, 2), (2, 1), (0, 2)),
        ((1, 2, 6, 6), (1, 1), (2, 3), (0, 0)),
        ((2, 3, 8, 9), (2, 3), (3, 2), (1, 0)),
    ):
        x = gen.integers(0, 2, size=shape).astype(np.uint8)
        xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
        win = sliding_window_view(xp, kernel, axis=(2, 3))[:, :, :: stride[0], :: stride[1]]
        n, _, ho, wo = win.shape[:4]
        ref = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * ho * wo, -1)
        patches, hw = im2col(x, kernel, stride, padding)
        assert hw == (ho, wo)
        np.testing.assert_array_equal(patches, ref)
        # A non-contiguous map (a transposed view, as the layers hand it on) gives the same patches.
        t = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(im2col(t, kernel, stride, padding)[0], ref)
