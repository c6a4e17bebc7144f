"""The driver contract as plain functions: ``check(driver, die)`` raises AssertionError on a breach.

Each check takes a fresh, *unconnected* driver and the address of a die the prober may step to; it
connects, probes and operates as it needs and leaves the driver in any state (the caller closes
it). :data:`CHECKS` is used twice: by the parametrized contract suite
(``tests/hardware/test_driver_contract.py``, which a vendor runs on its own driver) and by
``tests/hardware/test_broken_drivers.py``, which proves that every check fails on a driver that
breaks the rule it guards.

Tolerances are those a healthy analog die meets at the station's worst variation corner: read
noise of a few MAC, gains within a factor of two of the geometry's LSB, up to a tenth of the bit
lines dead. Where a check needs a die-independent answer, it builds inputs whose ideal result has a
margin far above those errors, so a healthy chip gives the ideal answer exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hardware.chip import (
    ChipGeometry,
    ImageHeader,
    LayerSpec,
    NetworkProgram,
    build_image,
    decode_image,
    encode_image,
    execute_network,
    ideal_readout,
)
from hardware.driver import (
    DieAddress,
    Driver,
    HardwareTimeoutError,
    NotConnectedError,
    ProtocolError,
)
from hardware.registry import available_drivers

Check = Callable[[Driver, DieAddress], None]

# A column "tracks" its ideal sums above this correlation; a column that tracks *another* column's
# ideal sums better than this is mis-routed (random weight columns correlate at ~1/sqrt(rows)).
TRACK_CORRELATION = 0.8
FOREIGN_CORRELATION = 0.5
MIN_TRACKING_FRACTION = 0.9  # up to a tenth of the bit lines may be dead or stuck on a real die
SLOW_TIMEOUT_S = 1e-12  # no operation completes this fast: the base class must raise the timeout


class _Raises:
    """``with _Raises(ProtocolError, "what"): ...`` without pytest: the checks also run outside it,
    and a breach must be an AssertionError that names the case."""

    def __init__(self, exc: type[BaseException], what: str) -> None:
        self.exc, self.what = exc, what
        self.value: BaseException | None = None

    def __enter__(self) -> _Raises:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            raise AssertionError(f"{self.what}: expected {self.exc.__name__}, nothing was raised")
        if not isinstance(exc, self.exc):
            raise AssertionError(
                f"{self.what}: expected {self.exc.__name__}, got {type(exc).__name__}: {exc}"
            ) from exc
        self.value = exc
        return True


def _probed(d: Driver, die: DieAddress) -> ChipGeometry:
    d.connect(timeout_s=60)
    d.probe(die)
    return d.geometry()


def _header(die: DieAddress, name: str = "contract") -> ImageHeader:
    return ImageHeader(die.ecid, name, "1", "", "")


# ------------------------------------------------------------------------------------- lifecycle
def check_lifecycle(d: Driver, die: DieAddress) -> None:
    """connect is idempotent, close disconnects, a closed driver reconnects (the pool relies on it)."""
    assert not d.connected, "a new driver must start unconnected"
    d.connect(timeout_s=60)
    assert d.connected
    d.connect()
    d.close()
    assert not d.connected
    with _Raises(NotConnectedError, "probe after close"):
        d.probe(die)
    d.close()  # closing twice is harmless
    with d:
        assert d.connected, "the context manager connects"
        d.probe(die)
    assert not d.connected, "leaving the context manager closes"


def check_identify(d: Driver, die: DieAddress) -> None:
    """probe returns the identity of the die at the address; identify repeats it."""
    d.connect(timeout_s=60)
    with _Raises(NotConnectedError, "identify before probe"):
        d.identify()
    ident = d.probe(die)
    assert ident.ecid == die.ecid and ident.address == die, f"probe({die.ecid}) reported {ident}"
    assert d.identify(0) == ident


def check_geometry(d: Driver, die: DieAddress) -> None:
    d.connect(timeout_s=60)
    g = d.geometry()
    assert g.n_macros >= 1 and g.rows >= 8 and g.cols >= 1 and g.phys_cols >= g.cols, g
    assert g.code_min < 0 < g.code_max, g


# ------------------------------------------------------------------------------- read_macro physics
def _balanced_weights(g: ChipGeometry, rng: np.random.Generator) -> NDArray[np.int8]:
    """(rows, phys_cols) in {-1,+1}, every column half +1: ideal sums of random inputs centre on 0."""
    col = np.where(np.arange(g.rows) < g.rows // 2, 1, -1).astype(np.int8)
    return np.stack([rng.permutation(col) for _ in range(g.phys_cols)], axis=1)


def _random_subsets(g: ChipGeometry, rng: np.random.Generator, n: int) -> NDArray[np.uint8]:
    """(n, rows) inputs of k active rows each: ideal sums spread by sqrt(k) ~ a quarter of the ADC range."""
    k = int(np.clip(round((g.code_max * g.adc_lsb_mac / 4) ** 2), 4, g.rows))
    x = np.zeros((n, g.rows), dtype=np.uint8)
    for i in range(n):
        x[i, rng.choice(g.rows, size=k, replace=False)] = 1
    return x


def _standardized(v: NDArray[np.floating]) -> NDArray[np.float64]:
    v = np.asarray(v, dtype=np.float64)
    sd = v.std(axis=0)
    return np.where(sd > 0, (v - v.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)


REPEATS = 8  # each input vector is read this often and the codes averaged: the check sees the transfer


def read_mean(d: Driver, macro: int, x: NDArray[np.uint8], g: ChipGeometry, what: str) -> NDArray[np.float64]:
    """Mean codes (n, phys_cols) of ``REPEATS`` reads of each of the inputs ``x`` (n, rows), in one call."""
    codes = d.read_macro(macro, np.repeat(x, REPEATS, axis=0))
    n = x.shape[0] * REPEATS
    assert isinstance(codes, np.ndarray) and codes.shape == (n, g.phys_cols) and codes.dtype == np.int16, (
        f"{what}: read_macro returned {getattr(codes, 'shape', None)} {getattr(codes, 'dtype', None)}, "
        f"expected ({n}, {g.phys_cols}) int16"
    )
    assert codes.min() >= g.code_min and codes.max() <= g.code_max, f"{what}: codes outside the ADC range"
    return codes.reshape(x.shape[0], REPEATS, g.phys_cols).astype(np.float64).mean(axis=1)


def assert_codes_track(
    codes: NDArray[np.floating], ideal_mac: NDArray[np.floating], g: ChipGeometry, what: str
) -> None:
    """Mean codes (n, phys_cols) follow the ideal sums (n, phys_cols) of *their own* column.

    Most columns correlate with their own ideal sums; none follows another column's sums better
    than its own (two swapped bit lines do exactly that); the slope is about one code per LSB.
    """
    n = codes.shape[0]
    corr = _standardized(codes).T @ _standardized(ideal_mac) / n  # (code column, ideal column)
    own = np.diag(corr)
    tracking = own > TRACK_CORRELATION
    assert tracking.mean() >= MIN_TRACKING_FRACTION, (
        f"{what}: only {tracking.sum()} of {g.phys_cols} columns follow their ideal inner products "
        f"(correlation > {TRACK_CORRELATION}; median {np.median(own):.2f})"
    )
    best = corr.argmax(axis=1)
    foreign = np.flatnonzero((best != np.arange(g.phys_cols)) & (corr.max(axis=1) > FOREIGN_CORRELATION))
    assert foreign.size == 0, (
        f"{what}: columns {foreign.tolist()} follow the ideal sums of columns {best[foreign].tolist()}: "
        "bit lines are swapped or mis-routed"
    )
    cols = np.flatnonzero(tracking)
    x, y = ideal_mac[:, cols] / g.adc_lsb_mac, codes[:, cols]
    slope = ((x - x.mean(0)) * (y - y.mean(0))).sum(0) / ((x - x.mean(0)) ** 2).sum(0)
    assert 0.5 <= np.median(slope) <= 2.0, (
        f"{what}: median slope {np.median(slope):.2f} codes per LSB of ideal sum; the geometry's "
        f"adc_lsb_mac ({g.adc_lsb_mac}) does not describe the die"
    )


def check_read_follows_weights_and_inputs(d: Driver, die: DieAddress) -> None:
    """read_macro computes the inner product of the written weights and the driven inputs.

    Under a random balanced pattern W the codes follow ``inputs @ W`` column by column; written with
    -W and read with the same inputs they follow ``-(inputs @ W)``; new inputs give codes that follow
    the new sums; the last macro holds its own pattern independently of macro 0.
    """
    g = _probed(d, die)
    rng = np.random.default_rng(20220)
    w = _balanced_weights(g, rng)
    x, x2 = _random_subsets(g, rng, 192), _random_subsets(g, rng, 192)
    ideal = x.astype(np.float64) @ w
    last = g.n_macros - 1
    d.write_macro(0, w)
    if last:
        d.write_macro(last, -w)
    assert_codes_track(read_mean(d, 0, x, g, "macro 0"), ideal, g, "macro 0 under W")
    assert_codes_track(
        read_mean(d, 0, x2, g, "macro 0"), x2.astype(np.float64) @ w, g, "macro 0 under W, new inputs"
    )
    if last:
        assert_codes_track(read_mean(d, last, x, g, f"macro {last}"), -ideal, g, f"macro {last} under -W")
    d.write_macro(0, -w)
    assert_codes_track(read_mean(d, 0, x, g, "macro 0"), -ideal, g, "macro 0 rewritten with -W")


def check_write_macros(d: Driver, die: DieAddress) -> None:
    """write_macros writes one pattern into every listed macro and into no other (a broadcast write on
    a tester that has one, one write per macro on one that has not)."""
    g = _probed(d, die)
    rng = np.random.default_rng(20221)
    w = _balanced_weights(g, rng)
    x = _random_subsets(g, rng, 192)
    ideal = x.astype(np.float64) @ w
    listed = sorted({0, g.n_macros - 1})
    others = [m for m in range(g.n_macros) if m not in listed][:1]
    if others:
        d.write_macros(others, (-w).astype(np.int8))
    before = d.counters.macro_writes
    d.write_macros(listed, w)
    assert d.counters.macro_writes == before + len(listed), (
        f"write_macros({listed}) counted {d.counters.macro_writes - before} macro writes, expected {len(listed)}"
    )
    for m in listed:
        assert_codes_track(
            read_mean(d, m, x, g, f"macro {m}"), ideal, g, f"macro {m} after write_macros({listed})"
        )
    for m in others:
        assert_codes_track(
            read_mean(d, m, x, g, f"macro {m}"), -ideal, g, f"macro {m}, not listed, keeps its own pattern"
        )


def check_read_is_monotone_in_active_rows(d: Driver, die: DieAddress) -> None:
    """More active rows of +1 weights give larger codes on most columns (a monotone transfer)."""
    g = _probed(d, die)
    d.write_macro(0, np.ones((g.rows, g.phys_cols), dtype=np.int8))
    steps = np.linspace(0, min(g.rows, int(g.code_max * g.adc_lsb_mac * 0.5)), 4).astype(int)
    x = np.zeros((len(steps), g.rows), dtype=np.uint8)
    for i, k in enumerate(steps):
        x[i, :k] = 1
    means = d.read_macro(0, np.repeat(x, 16, axis=0)).reshape(len(steps), 16, -1).mean(axis=1)
    rising = np.all(np.diff(means, axis=0) > 0, axis=0)
    assert rising.mean() >= MIN_TRACKING_FRACTION, (
        f"codes rise with the number of active +1 rows on only {rising.sum()} of {g.phys_cols} columns"
    )


def check_die_is_stable(d: Driver, die: DieAddress) -> None:
    """The same die read again after a re-probe gives the same mean codes (calibration relies on it).

    Two reads in one contact give the read-noise yardstick; the per-column mean codes after a
    re-probe must not move by more than three times what they move between those two reads.
    """
    g = _probed(d, die)
    rng = np.random.default_rng(7)
    w = _balanced_weights(g, rng)
    x = _random_subsets(g, rng, 512)
    d.write_macro(0, w)
    first = d.read_macro(0, x).astype(np.float64).mean(axis=0)
    again = d.read_macro(0, x).astype(np.float64).mean(axis=0)
    d.probe(die)
    d.write_macro(0, w)
    later = d.read_macro(0, x).astype(np.float64).mean(axis=0)
    within = float(np.sqrt(np.mean((again - first) ** 2)))
    across = float(np.sqrt(np.mean((later - first) ** 2)))
    assert across <= 3 * within + 0.05, (
        f"mean codes moved by {across:.3f} codes (rms over the columns) between two probes of the same "
        f"die, {within:.3f} between two reads in one contact: the die's variation is not stable"
    )


# ---------------------------------------------------------------------------- run_network executes
_N_PATTERNS = 8


def exact_program(
    g: ChipGeometry, truth: NDArray[np.uint8], *, name: str = "contract-exact"
) -> NetworkProgram:
    """A network whose ideal output is ``truth[p]`` (n_out logits of 0 or 1) for input pattern p.

    Input ``(K, 1, 1)``: a 1x1 digital convolution binarizes it; pattern p drives one block of k word
    lines; output channel j's weights on block p are all +1 where ``truth[p, j]`` and -1 elsewhere,
    so its inner product is exactly +k or -k against a threshold of 0 (a margin of k MAC, 32 on the
    default geometry, far above any healthy die's error); an identity classifier copies the binary outputs to the logits.
    """
    n_patterns, n_out = truth.shape
    k = g.rows // n_patterns  # a clipped code still decides right: the more rows, the wider the margin
    rows = n_patterns * k
    block_sign = np.where(truth == 1, 1, -1).astype(np.int8)  # (patterns, n_out)
    weight = np.repeat(block_sign, k, axis=0).T  # (n_out, rows)
    return NetworkProgram(
        name,
        "1",
        (rows, 1, 1),
        tuple(f"c{j}" for j in range(n_out)),
        (
            LayerSpec(
                "conv_digital",
                "binarize",
                {"stride": [1, 1], "padding": [0, 0]},
                {
                    "weight": np.eye(rows, dtype=np.float32).reshape(rows, rows, 1, 1),
                    "bias": np.full(rows, -0.5, np.float32),
                },
            ),
            LayerSpec("flatten", "flat"),
            LayerSpec(
                "dense_binary",
                "d1",
                {"weight_shape": [n_out, rows]},
                {"weight": np.ascontiguousarray(weight), "threshold": np.zeros(n_out, np.int32)},
            ),
            LayerSpec(
                "dense_digital",
                "logits",
                {},
                {"weight": np.eye(n_out, dtype=np.float32), "bias": np.zeros(n_out, np.float32)},
            ),
        ),
    )


def exact_inputs(
    program: NetworkProgram, rng: np.random.Generator, n: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Features (n, K, 1, 1) for the patterns ``n % n_patterns`` (soft levels 0.1 / 0.9) and those patterns."""
    rows = program.input_shape[0]
    k = rows // _N_PATTERNS
    pattern = np.arange(n) % _N_PATTERNS
    x = rng.uniform(0.0, 0.4, size=(n, rows)).astype(np.float32)
    for i, p in enumerate(pattern):
        x[i, p * k : (p + 1) * k] = rng.uniform(0.6, 1.0, size=k)
    return x.reshape(n, rows, 1, 1), pattern


def _agreement(logits: NDArray[np.float32], expected: NDArray[np.floating]) -> float:
    return float(np.mean(np.abs(logits - expected) < 1e-3))


def check_run_network_executes_the_image(d: Driver, die: DieAddress) -> None:
    """run_network runs the image programmed last: two images with opposite predicted outputs.

    Image A outputs ``truth[pattern]``, image B (every binary weight negated) ``1 - truth[pattern]``;
    both are also run on the ideal chip (``execute_network`` with ``ideal_readout``), which must give
    exactly that. The die must agree with the prediction on 95 % of the outputs (a dead bit line
    costs 1/cols of them), and programming A again must bring A's outputs back.
    """
    g = _probed(d, die)
    rng = np.random.default_rng(11)
    n_out = g.cols
    truth = (rng.random((_N_PATTERNS, n_out)) < 0.5).astype(np.uint8)
    prog_a = exact_program(g, truth)
    prog_b = exact_program(g, (1 - truth).astype(np.uint8))
    img_a = encode_image(build_image(prog_a, g, _header(die)))
    img_b = encode_image(build_image(prog_b, g, _header(die)))
    x, pattern = exact_inputs(prog_a, rng, 64)
    for blob, table in ((img_a, truth), (img_b, 1 - truth)):
        decoded = decode_image(blob)
        ideal = execute_network(decoded, x, ideal_readout(decoded.macros, g))
        np.testing.assert_array_equal(ideal, table[pattern].astype(np.float32))  # the test's own premise

    d.program_image(img_a)
    out_a = d.run_network(x)
    assert out_a.shape == (64, n_out) and out_a.dtype == np.float32, (
        f"run_network returned {out_a.shape} {out_a.dtype}, expected (64, {n_out}) float32"
    )
    d.program_image(img_b)
    out_b = d.run_network(x)
    d.program_image(img_a)
    out_a2 = d.run_network(x)
    for what, out, table in (
        ("image A", out_a, truth),
        ("image B (A's weights negated)", out_b, 1 - truth),
        ("image A programmed again", out_a2, truth),
    ):
        agree = _agreement(out, table[pattern].astype(np.float32))
        assert agree >= 0.95, (
            f"{what}: the die agrees with the ideal chip on {agree:.1%} of the outputs (>= 95 % needed): "
            "run_network does not execute the programmed image"
        )


def check_run_network_on_a_convolution(d: Driver, die: DieAddress) -> None:
    """A small convolutional program (digital conv, binary conv, pooling, classifier) runs."""
    g = _probed(d, die)
    image = encode_image(build_image(tiny_conv_program(g.rows), g, _header(die)))
    d.program_image(image)
    logits = d.run_network(np.random.default_rng(0).normal(size=(5, 1, 6, 6)).astype(np.float32))
    assert logits.shape == (5, 2) and logits.dtype == np.float32, f"{logits.shape} {logits.dtype}"
    assert np.all(np.isfinite(logits))


def tiny_conv_program(rows: int) -> NetworkProgram:
    rng = np.random.default_rng(3)
    cin = max(1, min(8, rows // 9))
    return NetworkProgram(
        "contract",
        "1",
        (1, 6, 6),
        ("a", "b"),
        (
            LayerSpec(
                "conv_digital",
                "c0",
                {"stride": [1, 1], "padding": [1, 1]},
                {
                    "weight": rng.normal(size=(cin, 1, 3, 3)).astype(np.float32),
                    "bias": np.zeros(cin, np.float32),
                },
            ),
            LayerSpec(
                "conv_binary",
                "b1",
                {"stride": [1, 1], "padding": [1, 1], "pool": [1, 1], "weight_shape": [4, cin, 3, 3]},
                {
                    "weight": rng.choice(np.array([-1, 1], dtype=np.int8), size=(4, cin, 3, 3)),
                    "threshold": np.zeros(4, np.int32),
                },
            ),
            LayerSpec("avgpool_global", "gap"),
            LayerSpec(
                "dense_digital",
                "fc",
                {},
                {"weight": rng.normal(size=(2, 4)).astype(np.float32), "bias": np.zeros(2, np.float32)},
            ),
        ),
    )


# ------------------------------------------------------------------------------------------ errors
def check_not_connected_errors(d: Driver, die: DieAddress) -> None:
    """NotConnectedError before connect (every operation) and before probe (every die operation)."""
    image = b"\0" * 64
    x = np.zeros((1, 8), dtype=np.uint8)
    before_connect: dict[str, Callable[[], object]] = {
        "probe": lambda: d.probe(die),
        "identify": d.identify,
        "geometry": d.geometry,
        "write_macro": lambda: d.write_macro(0, np.ones((8, 8), dtype=np.int8)),
        "write_macros": lambda: d.write_macros([0], np.ones((8, 8), dtype=np.int8)),
        "read_macro": lambda: d.read_macro(0, x),
        "program_image": lambda: d.program_image(image),
        "run_network": lambda: d.run_network(np.zeros((1, 1), np.float32)),
    }
    for op, call in before_connect.items():
        with _Raises(NotConnectedError, f"{op} before connect"):
            call()
    g = d.connect(timeout_s=60).geometry()
    ok_w = np.ones((g.rows, g.phys_cols), dtype=np.int8)
    ok_x = np.zeros((1, g.rows), dtype=np.uint8)
    before_probe: dict[str, Callable[[], object]] = {
        "identify": d.identify,
        "write_macro": lambda: d.write_macro(0, ok_w),
        "write_macros": lambda: d.write_macros([0], ok_w),
        "read_macro": lambda: d.read_macro(0, ok_x),
        "program_image": lambda: d.program_image(
            encode_image(build_image(tiny_conv_program(g.rows), g, _header(die)))
        ),
        "run_network": lambda: d.run_network(np.zeros((1, 1, 6, 6), np.float32)),
    }
    for op, call in before_probe.items():
        with _Raises(NotConnectedError, f"{op} before probe"):
            call()


def check_protocol_errors(d: Driver, die: DieAddress) -> None:
    """ProtocolError: no image programmed (never, or not since the last probe or macro write, single or
    broadcast); an
    image that is corrupted, for another die, or for another geometry."""
    g = _probed(d, die)
    x = np.zeros((2, 1, 6, 6), np.float32)
    with _Raises(ProtocolError, "run_network before any program_image"):
        d.run_network(x)
    good = encode_image(build_image(tiny_conv_program(g.rows), g, _header(die)))
    with _Raises(ProtocolError, "program_image of a truncated image"):
        d.program_image(good[:-7])
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    with _Raises(ProtocolError, "program_image of an image with a flipped byte"):
        d.program_image(bytes(flipped))
    other = DieAddress(die.lot_id, die.wafer, die.x + 1 if die.x < 999 else die.x - 1, die.y)
    with _Raises(ProtocolError, f"program_image of an image made for {other.ecid}"):
        d.program_image(encode_image(build_image(tiny_conv_program(g.rows), g, _header(other))))
    g2 = replace(g, spare_cols=g.spare_cols + 1)
    with _Raises(ProtocolError, "program_image of an image for another geometry"):
        d.program_image(encode_image(build_image(tiny_conv_program(g2.rows), g2, _header(die))))
    d.program_image(good)
    d.run_network(x)
    d.write_macro(0, np.ones((g.rows, g.phys_cols), dtype=np.int8))
    with _Raises(ProtocolError, "run_network after write_macro overwrote the image"):
        d.run_network(x)
    d.program_image(good)
    d.write_macros([0], np.ones((g.rows, g.phys_cols), dtype=np.int8))
    with _Raises(ProtocolError, "run_network after write_macros overwrote the image"):
        d.run_network(x)
    d.program_image(good)
    d.probe(die)
    with _Raises(ProtocolError, "run_network after a new probe"):
        d.run_network(x)


def check_bad_arguments(d: Driver, die: DieAddress) -> None:
    """Malformed arguments are ValueErrors (the caller's bug, not the tester's)."""
    g = _probed(d, die)
    ok_w = np.ones((g.rows, g.phys_cols), dtype=np.int8)
    ok_x = np.zeros((1, g.rows), dtype=np.uint8)
    cases: dict[str, Callable[[], object]] = {
        "weights of the wrong shape": lambda: d.write_macro(0, ok_w[:-1]),
        "weights other than -1/+1": lambda: d.write_macro(0, np.zeros_like(ok_w)),
        "inputs other than 0/1": lambda: d.read_macro(0, ok_x + 2),
        "inputs of the wrong shape": lambda: d.read_macro(0, ok_x[:, :-1]),
        "a macro outside the die": lambda: d.read_macro(g.n_macros, ok_x),
        "a negative macro": lambda: d.write_macro(-1, ok_w),
        "write_macros of no macro": lambda: d.write_macros([], ok_w),
        "write_macros of a macro twice": lambda: d.write_macros([0, 0], ok_w),
        "write_macros of a macro outside the die": lambda: d.write_macros([0, g.n_macros], ok_w),
        "write_macros of weights of the wrong shape": lambda: d.write_macros([0], ok_w[:-1]),
        "site 1 on a single-site driver": lambda: d.identify(1),
        "a zero timeout": lambda: d.read_macro(0, ok_x, timeout_s=0),
    }
    for what, call in cases.items():
        with _Raises(ValueError, what):
            call()
    d.program_image(encode_image(build_image(tiny_conv_program(g.rows), g, _header(die))))
    with _Raises(ValueError, "features of another shape than the program's input"):
        d.run_network(np.zeros((2, 1, 5, 5), np.float32))
    with _Raises(ValueError, "an empty batch"):
        d.run_network(np.zeros((0, 1, 6, 6), np.float32))


def check_timeouts(d: Driver, die: DieAddress) -> None:
    """An operation that overruns its timeout raises HardwareTimeoutError(op, timeout_s); the driver
    stays usable (probe again after a probe timeout)."""
    g = _probed(d, die)
    w = np.ones((g.rows, g.phys_cols), dtype=np.int8)
    x = np.zeros((4, g.rows), dtype=np.uint8)
    image = encode_image(build_image(tiny_conv_program(g.rows), g, _header(die)))
    ops: dict[str, Callable[[float | None], object]] = {
        "write_macro": lambda t: d.write_macro(0, w, timeout_s=t),
        "write_macros": lambda t: d.write_macros([0], w, timeout_s=t),
        "read_macro": lambda t: d.read_macro(0, x, timeout_s=t),
        "program_image": lambda t: d.program_image(image, timeout_s=t),
        "run_network": lambda t: d.run_network(np.zeros((2, 1, 6, 6), np.float32), timeout_s=t),
        "probe": lambda t: d.probe(die, timeout_s=t),
    }
    for op, call in ops.items():
        if op == "run_network":
            d.program_image(image)
        with _Raises(HardwareTimeoutError, f"{op} with a {SLOW_TIMEOUT_S:g} s timeout") as caught:
            call(SLOW_TIMEOUT_S)
        err = caught.value
        assert isinstance(err, HardwareTimeoutError)
        assert err.op == op and err.timeout_s == SLOW_TIMEOUT_S, f"{op}: {err.op=} {err.timeout_s=}"
        assert err.code == "hardware_timeout"
    d.probe(die)
    assert d.read_macro(0, x).shape == (4, g.phys_cols), "the driver must stay usable after timeouts"


# ------------------------------------------------------------------------------------- tester time
def check_tester_time_is_charged(d: Driver, die: DieAddress) -> None:
    """Every operation charges tester seconds and counts itself; more read vectors cost more."""
    d.connect(timeout_s=60)
    g = d.geometry()
    image = encode_image(build_image(tiny_conv_program(g.rows), g, _header(die)))

    def charged(op: str, call: Callable[[], object], counter: str, by: int) -> float:
        t0, c0 = d.tester_time_s, getattr(d.counters, counter)
        call()
        dt = d.tester_time_s - t0
        assert dt > 0, f"{op} charged no tester time"
        assert getattr(d.counters, counter) == c0 + by, f"{op}: counters.{counter} did not grow by {by}"
        return dt

    charged("probe", lambda: d.probe(die), "probes", 1)
    charged(
        "write_macro", lambda: d.write_macro(0, np.ones((g.rows, g.phys_cols), np.int8)), "macro_writes", 1
    )
    all_macros = list(range(g.n_macros))
    broadcast = charged(
        "write_macros of every macro",
        lambda: d.write_macros(all_macros, np.ones((g.rows, g.phys_cols), np.int8)),
        "macro_writes",
        g.n_macros,
    )
    assert broadcast <= g.n_macros * d.timing.write_macro_s * (1 + 1e-9), (
        f"write_macros of {g.n_macros} macros charged {broadcast:g} s, more than {g.n_macros} single writes"
    )
    one = charged(
        "read_macro of 1 vector", lambda: d.read_macro(0, np.zeros((1, g.rows), np.uint8)), "read_vectors", 1
    )
    many = charged(
        "read_macro of 1000 vectors",
        lambda: d.read_macro(0, np.zeros((1000, g.rows), np.uint8)),
        "read_vectors",
        1000,
    )
    assert many > one, f"1000 read vectors cost {many:g} s, no more than 1 ({one:g} s)"
    charged("program_image", lambda: d.program_image(image), "image_programs", 1)
    charged("run_network", lambda: d.run_network(np.zeros((7, 1, 6, 6), np.float32)), "inference_vectors", 7)
    spent = d.tester_time_s
    window = d.reset_counters()
    assert window.tester_time_s == spent and window.read_vectors == 1001 and window.read_calls == 2
    assert d.tester_time_s == 0 and d.counters.read_vectors == 0, "reset_counters starts a new window"


CHECKS: dict[str, Check] = {
    "lifecycle": check_lifecycle,
    "identify": check_identify,
    "geometry": check_geometry,
    "read_follows_weights_and_inputs": check_read_follows_weights_and_inputs,
    "write_macros": check_write_macros,
    "read_is_monotone": check_read_is_monotone_in_active_rows,
    "die_is_stable": check_die_is_stable,
    "run_network_executes_the_image": check_run_network_executes_the_image,
    "run_network_on_a_convolution": check_run_network_on_a_convolution,
    "not_connected_errors": check_not_connected_errors,
    "protocol_errors": check_protocol_errors,
    "bad_arguments": check_bad_arguments,
    "timeouts": check_timeouts,
    "tester_time": check_tester_time_is_charged,
}


def targets(environ: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """The drivers the suite runs on, each with its options, from ``CIMCAL_CONTRACT_DRIVER`` and
    ``CIMCAL_CONTRACT_OPTIONS``: the named driver with those options, or (no driver named) every
    registered driver with its own defaults. Raises ValueError for options without a driver."""
    name = environ.get("CIMCAL_CONTRACT_DRIVER", "").strip()
    raw = environ.get("CIMCAL_CONTRACT_OPTIONS", "").strip()
    if raw and not name:
        raise ValueError(
            "CIMCAL_CONTRACT_OPTIONS is set without CIMCAL_CONTRACT_DRIVER: options belong to one driver"
        )
    try:
        options = json.loads(raw) if raw else {}
    except ValueError as e:
        raise ValueError(f"CIMCAL_CONTRACT_OPTIONS is not JSON: {e}") from None
    if not isinstance(options, dict):
        raise ValueError("CIMCAL_CONTRACT_OPTIONS must be a JSON object of driver options")
    if name:
        return [(name, options)]
    return [(n, {}) for n in available_drivers()]


def failed_checks(make: Callable[[], Driver], die: DieAddress) -> dict[str, str]:
    """Run every check on a fresh driver from ``make``; the name and message of each that fails."""
    failed: dict[str, str] = {}
    for name, check in CHECKS.items():
        d = make()
        try:
            check(d, die)
        except AssertionError as e:
            failed[name] = str(e).splitlines()[0] if str(e) else "assertion failed"
        finally:
            d.close()
    return failed
