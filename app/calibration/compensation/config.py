"""The knobs of compensation and the version every image records."""

from __future__ import annotations

from dataclasses import dataclass

ALGORITHM_VERSION = "cimcal-comp-3"
"""Recorded in every image header; bump whenever the images this module computes change."""


@dataclass(frozen=True)
class CompensationConfig:
    """Knobs of the compensation (defaults are the production setting).

    replicas        : copies of every row tile; None = as many as idle macros allow, up to max_replicas
    use_cell_error  : use per-cell errors when the signature has them
    use_edges       : use the measured ADC edges when the signature has them
    reroute         : move dead / defective columns to free bit lines
    window          : half-width of the integer threshold search around the first guess (codes): 3
                      covers 98 % of the best thresholds of the reference model (the rest move the
                      window, then scan); 8 scored 2.4x more candidates and chose the same thresholds but
                      where two tie to 1e-12 (docs/performance.md)
    bias_weight     : the threshold maximises ``agreement - bias_weight * bias^2``, ``bias`` being the
                      predicted firing rate minus the ideal one: unbiased channels matter more than
                      a few more agreeing decisions (see docs/calibration.md)
    """

    replicas: int | None = None
    max_replicas: int = 4
    use_cell_error: bool = True
    use_edges: bool = True
    reroute: bool = True
    window: int = 3
    bias_weight: float = 100.0
