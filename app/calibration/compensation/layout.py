"""Where a model's tiles go on one die: replicated row tiles, column re-routing around dead bit lines
and disagreeing stuck cells, and the macro contents that result (see :mod:`app.calibration.compensate`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from app.calibration.activations import ActivationStats
from app.calibration.compensation.config import CompensationConfig
from app.calibration.signature import Signature
from hardware.chip import ChipGeometry, NetworkProgram, Tile, map_network


def replicated_tiles(program: NetworkProgram, geometry: ChipGeometry, replicas: int) -> tuple[Tile, ...]:
    """The standard mapping plus ``replicas - 1`` copies of it on the next idle macros."""
    base = map_network(program, geometry)
    n_used = len(base)
    if replicas < 1 or n_used * replicas > geometry.n_macros:
        raise ValueError(f"{replicas} replicas of {n_used} macros do not fit {geometry.n_macros} macros")
    return tuple(
        Tile(
            t.layer,
            t.row_tile,
            t.col_tile,
            t.macro + k * n_used,
            t.row_start,
            t.n_rows,
            t.col_start,
            t.n_cols,
        )
        for k in range(replicas)
        for t in base
    )


def choose_replicas(program: NetworkProgram, geometry: ChipGeometry, config: CompensationConfig) -> int:
    n_used = len(map_network(program, geometry))
    most = max(1, geometry.n_macros // max(1, n_used))
    if config.replicas is not None:
        return max(1, min(config.replicas, most))
    return max(1, min(config.max_replicas, most))


def route_tile(
    tile: Tile,
    program: NetworkProgram,
    stats: ActivationStats,
    signature: Signature | None,
    *,
    reroute: bool = True,
) -> tuple[NDArray[np.int16], int, int]:
    """Column routing (cols,) int16 logical -> physical of ``tile`` on its macro; (row, moved, unrepaired).

    Dead bit lines are replaced by free live ones (spares, or data columns the tile does not use);
    then columns whose stuck cells disagree with the weights on busy rows move too, while free lines
    remain. Deterministic.
    """
    g = stats.geometry
    identity = np.arange(g.cols, dtype=np.int16)
    if signature is None or not reroute:
        dead_used = 0 if signature is None else int(signature.dead_cols[tile.macro, : tile.n_cols].sum())
        return identity, 0, dead_used
    layer = program.layer(tile.layer)
    wm = layer.weight_matrix()[
        tile.row_start : tile.row_start + tile.n_rows, tile.col_start : tile.col_start + tile.n_cols
    ]
    p_row = stats.layers[tile.layer].p_row[tile.row_start : tile.row_start + tile.n_rows]
    dead = signature.dead_cols[tile.macro]
    conflict = _stuck_conflicts(signature, tile.macro, wm, p_row)  # (n_cols, phys_cols) expected MAC error
    n = tile.n_cols
    own = conflict[np.arange(n), np.arange(n)]
    free = np.arange(g.phys_cols) >= n
    free &= ~dead
    row = identity.copy()
    row_phys = np.arange(g.phys_cols, dtype=np.int64)[:n].copy()
    moved = 0
    # Only dead columns and those whose own stuck cells cost enough can move; dead first, then worst.
    movable = np.flatnonzero(dead[:n] | (own >= 0.25))
    for lcol in sorted(movable.tolist(), key=lambda c: (not dead[c], -own[c], c)):
        free_idx = np.flatnonzero(free)
        if free_idx.size == 0:
            break
        best = int(free_idx[np.argmin(conflict[lcol, free_idx])])  # the lowest of equal costs
        if dead[lcol] or conflict[lcol, best] < own[lcol]:
            row_phys[lcol] = best
            free[best] = False
            moved += 1
    unrepaired = int(dead[row_phys].sum())
    taken = np.zeros(g.phys_cols, bool)
    taken[row_phys] = True
    row[:n] = row_phys
    row[n:] = np.flatnonzero(~taken)[: g.cols - n]
    return row, moved, unrepaired


def place_tiles(
    program: NetworkProgram,
    stats: ActivationStats,
    signature: Signature | None,
    replicas: int,
    *,
    reroute: bool = True,
) -> tuple[tuple[Tile, ...], NDArray[np.int16], int, int]:
    """Tiles (with ``replicas`` copies), column routing (n_macros, cols), moved and unrepaired columns.

    Each tile goes to its natural macro (the standard mapping, copies on the next idle macros)
    unless routing cannot repair that macro's dead bit lines and an idle macro can.
    """
    g = stats.geometry
    wanted = replicated_tiles(program, g, replicas)
    col_map = np.tile(np.arange(g.cols, dtype=np.int16), (g.n_macros, 1))
    natural = {t.macro for t in wanted}
    idle = [m for m in range(g.n_macros) if m not in natural]
    placed: list[Tile] = []
    moved_total = unrepaired_total = 0
    for t in wanted:
        row, moved, unrepaired = route_tile(t, program, stats, signature, reroute=reroute)
        if unrepaired and idle and reroute:
            for m in list(idle):
                cand = replace(t, macro=m)
                row2, moved2, unrep2 = route_tile(cand, program, stats, signature, reroute=reroute)
                if unrep2 < unrepaired:
                    idle.remove(m)
                    idle.append(t.macro)
                    idle.sort()
                    t, row, moved, unrepaired = cand, row2, moved2 + 1, unrep2
                    if unrepaired == 0:
                        break
        col_map[t.macro] = row
        placed.append(t)
        moved_total += moved
        unrepaired_total += unrepaired
    return tuple(placed), col_map, moved_total, unrepaired_total


def _stuck_conflicts(
    signature: Signature, macro: int, wm: NDArray[np.int8], p_row: NDArray[np.float32]
) -> NDArray[np.float64]:
    """Expected |error| (MAC) per (logical column, physical column) from stuck cells on used rows."""
    n_rows, n_cols = wm.shape
    cost = np.zeros((n_cols, signature.geometry.phys_cols), np.float64)
    s = signature.stuck
    sel = np.flatnonzero((s.macro == macro) & (s.row < n_rows))
    if sel.size == 0:
        return cost
    r = s.row[sel].astype(np.int64)
    wrong = wm[r, :] != s.value[sel][:, None]  # (stuck, n_cols)
    k, c = np.nonzero(wrong)  # stuck-major: each cell's additions in the order of the stuck list
    val = 2.0 * s.magnitude[sel].astype(np.float64) * p_row[r].astype(np.float64)
    np.add.at(cost, (c, s.col[sel].astype(np.int64)[k]), val[k])
    return cost


def place_routed(
    program: NetworkProgram, tiles: Sequence[Tile], col_map: NDArray[np.int16], geometry: ChipGeometry
) -> NDArray[np.int8]:
    """Macro contents (n_macros, rows, phys_cols) int8 with each logical column on its routed bit line."""
    macros = np.ones((geometry.n_macros, geometry.rows, geometry.phys_cols), dtype=np.int8)
    mats = {layer.name: layer.weight_matrix() for layer in program.binary_layers()}
    for t in tiles:
        block = mats[t.layer][t.row_start : t.row_start + t.n_rows, t.col_start : t.col_start + t.n_cols]
        macros[t.macro][: t.n_rows, col_map[t.macro, : t.n_cols]] = block
    return macros
