"""``cimcal lots`` and ``cimcal models``: images for a stored model, and model files from ONNX."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.cli.base import Subcommands, subcommand
from app.config import get_settings
from app.db import migrate
from app.db.session import make_engine, make_session_factory


# ------------------------------------------------------------------------------------------------- lots
def _run_lots_recompensate(args: argparse.Namespace) -> int:
    from app.services.images import ImageStore
    from app.services.recompensate import recompensate_lot
    from app.services.runtime import ModelRuntimes

    if args.device == "cpu":
        import torch

        torch.set_num_threads(1)  # batches run one per process and core (--workers)
    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        if settings.auto_migrate:
            migrate.upgrade(engine)
        out = recompensate_lot(
            make_session_factory(engine),
            ModelRuntimes(settings),
            ImageStore(settings.image_store_dir),
            args.lot,
            args.model,
            batch_dies=args.batch,
            device=args.device,
            workers=args.workers,
            actor="cli",
        )
    finally:
        engine.dispose()
    print(
        f"lot {out.lot_id} for {out.model}: {out.computed} image(s) computed, {out.already} already there, "
        f"{out.not_characterized} die(s) not characterized, {out.uncalibratable} uncalibratable; "
        f"{out.wall_s:.1f} s ({out.dies_per_s:.1f} dies/s, numerics {out.compute_s:.1f} s on {out.device})"
    )
    return 0


@subcommand
def _lots(commands: Subcommands) -> None:
    from app.services.recompensate import DEFAULT_BATCH_DIES

    p = commands.add_parser("lots", help="lots")
    sub = p.add_subparsers(dest="lots_command", required=True, metavar="COMMAND")
    rc = sub.add_parser(
        "recompensate",
        help="compute every characterized die's image for a model from the stored signatures (no tester)",
    )
    rc.add_argument("lot")
    rc.add_argument("--model", required=True, help="name@version of a stored model")
    rc.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH_DIES, help="dies per batch (one transaction each)"
    )
    rc.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where torch runs the batched search"
    )
    rc.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes computing batches on the CPU (default: cores)",
    )
    rc.set_defaults(run=_run_lots_recompensate)


# ----------------------------------------------------------------------------------------------- models
def _ints_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W or F (positive), got {text!r}")
    return shape


def _run_models_import(args: argparse.Namespace) -> int:
    import json

    from app.nn.model import model_bytes, parse_pass_limits
    from app.nn.network import DatasetRefs, ModelFormatError, Preprocessing, to_program
    from app.nn.onnx_import import network_from_onnx
    from hardware.chip import ChipError, ChipGeometry, map_network

    def fail(message: str) -> int:
        print(f"cimcal: {message}", file=sys.stderr)
        return 1

    try:
        names = (
            args.classes_file.read_text().splitlines() if args.classes_file else args.class_names.split(",")
        )
        data = args.file.read_bytes()
    except OSError as e:
        return fail(str(e))
    if (args.calibration_dataset is None) != (args.test_dataset is None):
        return fail("give both --calibration-dataset and --test-dataset, or neither")
    kind, _, threshold = args.preprocessing.partition(":")
    try:
        prep = (
            Preprocessing("binarize", threshold=float(threshold))
            if kind == "binarize"
            else Preprocessing(kind)
        )
        limits = (
            parse_pass_limits(json.loads(args.pass_limits), "--pass-limits") if args.pass_limits else None
        )
    except (ValueError, KeyError, TypeError) as e:
        return fail(f"bad --preprocessing or --pass-limits: {e!r}")
    datasets = DatasetRefs(args.calibration_dataset, args.test_dataset) if args.test_dataset else None
    try:
        net = network_from_onnx(
            data,
            name=args.name,
            version=args.version,
            class_names=[c.strip() for c in names if c.strip()],
            input_shape=args.input_shape,
            preprocessing=prep,
            datasets=datasets,
            pass_limits=limits,
        )
        map_network(to_program(net), ChipGeometry())  # what the upload checks: refuse a model that cannot run
        out = model_bytes(net)
    except (ModelFormatError, ChipError) as e:
        return fail(str(e))
    args.out.write_bytes(out)
    kinds = ", ".join(f"{layer.name} {layer.kind}" for layer in net.layers)
    n_binary = len(net.binary_layers())
    print(
        f"wrote {args.out}: {net.name}@{net.version}: {kinds}; {n_binary} binary, {net.macros_needed()} macro(s)"
    )
    if n_binary == 0:
        print(
            "cimcal: no binary layer: is the batch norm folded into the weights by the exporter?",
            file=sys.stderr,
        )
    return 0


@subcommand
def _models(commands: Subcommands) -> None:
    p = commands.add_parser("models", help="model files")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    imp = sub.add_parser(
        "import",
        help="convert an ONNX file (torch.onnx.export of a supported network) into a model file",
        description="See docs/model.md, 'Bring your own PyTorch model'.",
    )
    imp.add_argument("file", type=Path, help="the .onnx file")
    imp.add_argument("--name", required=True)
    imp.add_argument("--version", required=True)
    classes = imp.add_mutually_exclusive_group(required=True)
    classes.add_argument("--class-names", help="comma-separated, in logit order")
    classes.add_argument("--classes-file", type=Path, help="one class name per line, in logit order")
    imp.add_argument(
        "--input-shape", type=_ints_arg, default=None, help="C,H,W or F (default: the ONNX input's)"
    )
    imp.add_argument("--preprocessing", default="none", help="none (default) or binarize:THRESHOLD")
    imp.add_argument("--calibration-dataset", default=None, metavar="NAME@VERSION")
    imp.add_argument("--test-dataset", default=None, metavar="NAME@VERSION")
    imp.add_argument(
        "--pass-limits", default=None, metavar="JSON", help='{"mode": "absolute", "grades": [...]}'
    )
    imp.add_argument("--out", type=Path, required=True, help="the model file to write (.npz)")
    imp.set_defaults(run=_run_models_import)
