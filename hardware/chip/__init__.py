"""Chip geometry, the network program a die executes, its mapping onto macros, and the weight image.

Worked example of the mapping (default geometry: macros of 256 rows x 64 data columns + 4 spares):
a binary 3x3 convolution with 64 input and 64 output channels has K = 64*3*3 = 576 rows, so it
takes ceil(576/256) = 3 row tiles (rows 0-255, 256-511, 512-575) and ceil(64/64) = 1 column tile:
three macros. Each macro digitizes its partial bit-line sums; the digital periphery adds the three
codes per output channel and compares the total with the channel's integer threshold::

      patches (N, 576) --rows 0..255----> macro m0 --ADC--> codes0 (N, 64) --+
                       --rows 256..511--> macro m1 --ADC--> codes1 (N, 64) --+--> sum >= T --> {0,1}
                       --rows 512..575--> macro m2 --ADC--> codes2 (N, 64) --+
                          (rows 64..255 of m2 are driven 0)

The weight image (:func:`encode_image`) is the per-chip artefact: it carries the network topology,
the digital layers, the contents of every macro, per-channel integer thresholds and the column
routing (logical column -> physical bit line, so a dead column can be moved onto a spare). Its
byte layout is documented in ``docs/weight-image.md``.

The package is split by concept: :mod:`~hardware.chip.geometry` (the die and the program),
:mod:`~hardware.chip.mapping` (tiles onto macros), :mod:`~hardware.chip.image` (the weight image
and its bytes) and :mod:`~hardware.chip.execute` (running a network through a readout). Every
public name is importable from ``hardware.chip`` itself.
"""

from hardware.chip.execute import (
    ColumnReadout,
    Readout,
    _maxpool,
    binary_layer_sums,
    execute_network,
    ideal_readout,
    im2col,
)
from hardware.chip.geometry import (
    BINARY_KINDS,
    LAYER_KINDS,
    ChipError,
    ChipGeometry,
    LayerSpec,
    NetworkProgram,
)
from hardware.chip.image import (
    IMAGE_FORMAT_VERSION,
    IMAGE_MAGIC,
    ImageFormatError,
    ImageHeader,
    WeightImage,
    build_image,
    decode_image,
    encode_image,
    image_sha256,
    pack_sections,
    strip_binary_weights,
)
from hardware.chip.mapping import Tile, ideal_threshold_codes, identity_col_map, map_network, place_weights

__all__ = [
    "BINARY_KINDS",
    "IMAGE_FORMAT_VERSION",
    "IMAGE_MAGIC",
    "LAYER_KINDS",
    "ChipError",
    "ChipGeometry",
    "ColumnReadout",
    "ImageFormatError",
    "ImageHeader",
    "LayerSpec",
    "NetworkProgram",
    "Readout",
    "Tile",
    "WeightImage",
    "_maxpool",
    "binary_layer_sums",
    "build_image",
    "decode_image",
    "encode_image",
    "execute_network",
    "ideal_readout",
    "ideal_threshold_codes",
    "identity_col_map",
    "im2col",
    "image_sha256",
    "map_network",
    "pack_sections",
    "place_weights",
    "strip_binary_weights",
]
