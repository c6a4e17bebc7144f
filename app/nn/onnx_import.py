"""Bring an ONNX model: :func:`network_from_onnx` reads the ONNX file of a network built from the
blocks of :mod:`app.nn.torch_export` (or any chain of the same operators) into a
:class:`~app.nn.network.BinaryNetwork`.

The graph must be a single chain from its one input to its one output. Each operator on the chain
becomes a primitive op of :mod:`app.nn.folding`, which matches the same patterns and folds batch
norm the same way as :func:`~app.nn.torch_export.export_torch`, so both give byte-identical model
files for the same network:

* ``Conv`` (2-D, group 1, dilation 1, symmetric explicit pads), ``BatchNormalization`` (inference),
  ``MaxPool`` (stride = kernel, no pads, floor mode), ``GlobalAveragePool`` or ``ReduceMean`` over
  (H, W), ``Flatten`` (axis 1) or ``Reshape`` to ``[0, -1]``, ``Gemm`` or ``MatMul`` [+ ``Add``];
* the step ``GreaterOrEqual(x, 0)`` + ``Cast`` to float;
* ``Identity`` and inference ``Dropout`` on the chain are skipped.

Weights and other parameters are initializers or constant subgraphs of ``Constant``, ``Identity``,
``Cast``, ``Sign``, ``Neg``, ``Transpose``, comparisons and ``Where`` (the TorchScript exporter writes
``sign`` of the latent weights as ``Where(w >= 0, 1, -1)``), evaluated here with numpy. Any other
operator raises :class:`UnsupportedOperatorError`. Tensors stored as external data are refused
(they would name files on this machine).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from app.nn.folding import (
    BatchNormOp,
    BatchNormParams,
    ConvOp,
    DenseOp,
    FlattenOp,
    GlobalAvgPoolOp,
    MaxPoolOp,
    Op,
    StepOp,
    assembled_network,
)
from app.nn.network import (
    MAX_ARRAY_ELEMENTS,
    BinaryNetwork,
    DatasetRefs,
    ModelFormatError,
    PassLimits,
    Preprocessing,
)

MAX_ONNX_BYTES = 16 * 2**20
MAX_NODES = 4096
MAX_FOLDED_ELEMENTS = 4 * MAX_ARRAY_ELEMENTS  # all constants computed from the graph, together

_ONNX_DOMAINS = ("", "ai.onnx")
_NUMERIC_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.BOOL,
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
_CHAIN_OPS = {
    "Identity",
    "Dropout",
    "Conv",
    "BatchNormalization",
    "MaxPool",
    "GlobalAveragePool",
    "ReduceMean",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
    "GreaterOrEqual",
}
_FOLDABLE_OPS = {
    "Constant",
    "Identity",
    "Cast",
    "CastLike",
    "Sign",
    "Neg",
    "Transpose",
    "Where",
    "Shape",
    "Expand",
    "Concat",
    "Unsqueeze",
}
_COMPARE = {
    "GreaterOrEqual": np.greater_equal,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "Less": np.less,
    "Equal": np.equal,
}


class UnsupportedOperatorError(ModelFormatError):
    """An ONNX node that has no cimcal layer here (an unknown operator, or a known one with
    attributes or neighbours outside the supported patterns); names its ``op_type`` and ``node``."""

    def __init__(self, message: str, *, op_type: str, node: str) -> None:
        super().__init__(message)
        self.op_type = op_type
        self.node = node


Arr = NDArray[Any]
_Origin = tuple[int, onnx.NodeProto]


def _label(origin: _Origin) -> str:
    index, node = origin
    return node.name or f"#{index}"


def _describe(origin: _Origin) -> str:
    return f"{origin[1].op_type} node {_label(origin)!r}"


def _error(origin: _Origin, message: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(
        f"{_describe(origin)}: {message}", op_type=origin[1].op_type, node=_label(origin)
    )


# ----------------------------------------------------------------------------------------- parsing
def _parse(data: bytes) -> onnx.ModelProto:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ModelFormatError("an ONNX model must be given as bytes")
    if len(data) > MAX_ONNX_BYTES:
        raise ModelFormatError(f"ONNX file is {len(data)} bytes; the limit is {MAX_ONNX_BYTES}")
    try:
        model = onnx.load_from_string(bytes(data))
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-like errors and others
        raise ModelFormatError(f"not an ONNX model: {e}") from e
    if not model.HasField("graph") or not model.graph.node:
        raise ModelFormatError("not an ONNX model: no graph")
    if len(model.graph.node) > MAX_NODES:
        raise ModelFormatError(f"ONNX graph has {len(model.graph.node)} nodes; the limit is {MAX_NODES}")
    if model.graph.sparse_initializer:
        raise ModelFormatError("sparse initializers are not supported")
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors.extend(a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise ModelFormatError("tensors stored as external data are not supported: embed them in the file")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError and the C++ checker's other errors
        raise ModelFormatError(f"invalid ONNX model: {e}") from e
    return model


def _to_array(t: onnx.TensorProto, what: str) -> Arr:
    size = math.prod(t.dims)
    if size > MAX_ARRAY_ELEMENTS:
        raise ModelFormatError(f"{what}: {size} elements; the limit is {MAX_ARRAY_ELEMENTS}")
    if t.data_type not in _NUMERIC_TYPES:
        raise ModelFormatError(
            f"{what}: tensor type {helper.tensor_dtype_to_string(t.data_type)} is not supported"
        )
    try:
        return np.asarray(numpy_helper.to_array(t))
    except Exception as e:
        raise ModelFormatError(f"{what}: unreadable tensor: {e}") from e


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in v)


# --------------------------------------------------------------------------------------- the graph
class _Graph:
    """Constants (initializers and constant subgraphs, evaluated) and the consumers of each value."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.graph = graph
        # one wrapper object per node, so that ``id`` identifies it (protobuf may make new wrappers)
        self.nodes = list(graph.node)
        self.index = {id(node): i for i, node in enumerate(self.nodes)}
        self.consts: dict[str, Arr] = {
            t.name: _to_array(t, f"initializer {t.name!r}") for t in graph.initializer
        }
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.producer = {o: node for node in self.nodes for o in node.output if o}
        self.batch: int | None = None
        self.folded_elements = 0
        inputs = [v for v in graph.input if v.name not in self.consts]
        elem = inputs[0].type.tensor_type.elem_type if len(inputs) == 1 else onnx.TensorProto.FLOAT
        self.float_dtype = helper.tensor_dtype_to_np_dtype(
            elem if elem in _FLOAT_TYPES else onnx.TensorProto.FLOAT
        )
        for node in self.nodes:  # topologically sorted (checked by onnx.checker)
            # CastLike reads only the type of its second input (the dynamo exporter casts constants
            # like the activation): that is no use of the activation
            used = node.input[:1] if node.op_type == "CastLike" else node.input
            for name in used:
                if name:
                    self.consumers[name].append(node)
            if node.domain in _ONNX_DOMAINS and all(not n or n in self.consts for n in used):
                self._fold(node)

    def origin(self, node: onnx.NodeProto) -> _Origin:
        return (self.index[id(node)], node)

    def _fold(self, node: onnx.NodeProto) -> None:
        """Evaluate a node whose inputs are all constant, where it is one of the plumbing operators."""
        op = node.op_type
        a = _attrs(node)
        args = [self.consts[n] for n in (node.input[:1] if op == "CastLike" else node.input) if n]
        out: Arr
        if op == "Constant":
            if "value" not in a:
                for key in ("value_float", "value_floats", "value_int", "value_ints"):
                    if key in a:
                        value = a[key]
                        out = np.asarray(value, np.float32 if "float" in key else np.int64)
                        break
                else:
                    return  # strings or sparse: not a parameter; left for the chain to refuse
            else:
                out = _to_array(a["value"], f"Constant {node.name!r}")
        elif op == "Identity" and len(args) == 1:
            out = args[0]
        elif op == "Cast" and len(args) == 1:
            if a.get("to") not in _NUMERIC_TYPES:
                return
            out = args[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))
        elif op == "CastLike" and args:
            target = self.consts.get(node.input[1]) if len(node.input) > 1 else None
            out = args[0].astype(target.dtype if target is not None else self.float_dtype)
        elif op == "Shape" and len(args) == 1:
            rank = args[0].ndim
            out = np.asarray(args[0].shape[slice(a.get("start", 0), a.get("end", rank))], dtype=np.int64)
        elif op == "Expand" and len(args) == 2:
            try:
                shape = np.broadcast_shapes(args[0].shape, tuple(int(v) for v in np.ravel(args[1])))
            except ValueError as e:
                raise _error(self.origin(node), f"shapes do not broadcast: {e}") from e
            out = np.broadcast_to(args[0], self._bounded(node, shape)).copy()
        elif op == "Concat" and args:
            try:
                out = np.concatenate(args, axis=int(a.get("axis", 0)))
            except ValueError as e:
                raise _error(self.origin(node), f"cannot concatenate: {e}") from e
        elif op == "Unsqueeze" and args:
            axes = _ints(a["axes"]) if "axes" in a else _ints(np.ravel(args[1])) if len(args) > 1 else ()
            try:
                out = np.expand_dims(args[0], axes)
            except (ValueError, np.exceptions.AxisError) as e:
                raise _error(self.origin(node), f"bad axes {list(axes)}: {e}") from e
        elif op in ("Sign", "Neg") and len(args) == 1:
            out = np.sign(args[0]) if op == "Sign" else np.negative(args[0])
        elif op == "Transpose" and len(args) == 1:
            perm = _ints(a["perm"]) if "perm" in a else tuple(reversed(range(args[0].ndim)))
            if sorted(perm) != list(range(args[0].ndim)):
                raise _error(self.origin(node), f"bad perm {list(perm)}")
            out = np.transpose(args[0], perm)
        elif (op in _COMPARE and len(args) == 2) or (op == "Where" and len(args) == 3):
            try:
                shape = np.broadcast_shapes(*(x.shape for x in args))
            except ValueError as e:
                raise _error(self.origin(node), f"shapes do not broadcast: {e}") from e
            self._bounded(node, shape)
            out = (
                _COMPARE[op](args[0], args[1])
                if op in _COMPARE
                else np.where(args[0].astype(bool), args[1], args[2])
            )
        else:
            return
        self.folded_elements += out.size
        if self.folded_elements > MAX_FOLDED_ELEMENTS:
            raise ModelFormatError(f"the graph's constants exceed {MAX_FOLDED_ELEMENTS} elements")
        self.consts[node.output[0]] = np.asarray(out)

    def _bounded(self, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, ...]:
        if math.prod(shape) > MAX_ARRAY_ELEMENTS:
            raise ModelFormatError(
                f"constant {_describe(self.origin(node))} would have {math.prod(shape)} elements"
            )
        return shape

    def const(self, node: onnx.NodeProto, k: int, what: str, *, optional: bool = False) -> Arr | None:
        """Input ``k`` of ``node`` as a constant (None where absent and optional)."""
        name = node.input[k] if k < len(node.input) else ""
        if not name:
            if optional:
                return None
            raise _error(self.origin(node), f"missing {what}")
        if name not in self.consts:
            producer = self.producer.get(name)
            if producer is not None and producer.op_type not in _FOLDABLE_OPS | set(_COMPARE) | _CHAIN_OPS:
                raise _error(self.origin(producer), "operator not supported")
            raise _error(self.origin(node), f"the {what} must be a constant (an initializer)")
        return self.consts[name]

    def float_const(self, node: onnx.NodeProto, k: int, what: str, ndim: int) -> NDArray[np.float32]:
        arr = self.const(node, k, what)
        assert arr is not None
        if arr.ndim != ndim or arr.dtype.kind not in "fiub":
            raise _error(
                self.origin(node), f"the {what} must be a {ndim}-D numeric tensor, got shape {arr.shape}"
            )
        out = np.asarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(out)):
            raise _error(self.origin(node), f"the {what} has non-finite values")
        return out

    def only_consumer(self, value: str) -> onnx.NodeProto | None:
        users = self.consumers.get(value, [])
        return users[0] if len(users) == 1 and not self._is_output(value) else None

    def _is_output(self, value: str) -> bool:
        return any(o.name == value for o in self.graph.output)

    # ------------------------------------------------------------------------------ the chain
    def input_shape(self, given: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
        inputs = [v for v in self.graph.input if v.name not in self.consts]
        if len(inputs) != 1:
            raise ModelFormatError(f"the graph needs exactly one input, it has {[v.name for v in inputs]}")
        if len(self.graph.output) != 1:
            raise ModelFormatError(f"the graph needs exactly one output, it has {len(self.graph.output)}")
        inp = inputs[0]
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type") or tt.elem_type not in _FLOAT_TYPES:
            raise ModelFormatError(f"input {inp.name!r} must be a float tensor")
        dims: list[int | None] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(dims) not in (2, 4):
            raise ModelFormatError(f"input {inp.name!r} must be (N, C, H, W) or (N, F), got rank {len(dims)}")
        if given is not None:
            shape = tuple(int(v) for v in given)
            if len(shape) != len(dims) - 1 or any(
                d not in (None, s) for d, s in zip(dims[1:], shape, strict=True)
            ):
                raise ModelFormatError(f"input shape {list(shape)} does not match the graph's input {dims}")
        else:
            shape = tuple(d or 0 for d in dims[1:])
            if min(shape) < 1:
                raise ModelFormatError(f"the graph's input {dims} has dynamic sizes: give input_shape")
        self.batch = dims[0]
        return inp.name, shape

    def ops(self, start: str) -> list[Op]:
        """Walk the chain from ``start`` to the graph output, translating each node."""
        out_name = self.graph.output[0].name
        ops: list[Op] = []
        value = start
        for _ in range(len(self.nodes) + 1):
            users = self.consumers.get(value, [])
            if value == out_name:
                if users:
                    raise ModelFormatError(f"the graph output {value!r} is also used inside the graph")
                return ops
            if not users:
                raise ModelFormatError(
                    f"the chain from the input stops at {value!r}, before the graph output"
                )
            if len(users) > 1:
                for u in users:
                    if u.op_type not in _CHAIN_OPS or u.domain not in _ONNX_DOMAINS:
                        raise _error(self.origin(u), "operator not supported")
                names = ", ".join(_describe(self.origin(u)) for u in users)
                raise ModelFormatError(
                    f"the graph branches at {value!r} ({names}): only a chain of layers is supported"
                )
            op, value = self._translate(users[0], value)
            if op is not None:
                ops.append(op)
        raise ModelFormatError("the graph has a cycle")  # pragma: no cover - the checker sorts nodes

    def _translate(self, node: onnx.NodeProto, x: str) -> tuple[Op | None, str]:
        """The op of ``node`` (consuming activation ``x``) and the activation it leaves."""
        origin = self.origin(node)
        op = node.op_type
        if node.domain not in _ONNX_DOMAINS or op not in _CHAIN_OPS:
            raise _error(origin, "operator not supported")
        if not node.input or node.input[0] != x:
            raise _error(origin, "the activation must be the first input")
        a = _attrs(node)
        y = node.output[0]
        if any(o and self.consumers.get(o) for o in node.output[1:]):
            raise _error(origin, "only the first output may be used")
        if op == "Identity":
            return None, y
        if op == "Dropout":
            mode = self.const(node, 2, "training mode", optional=True)
            if mode is not None and bool(np.any(mode)):
                raise _error(origin, "dropout in training mode")
            return None, y
        if op == "Conv":
            return self._conv(node, a), y
        if op == "BatchNormalization":
            if a.get("training_mode", 0) != 0:
                raise _error(origin, "batch norm in training mode: export the model in eval mode")
            gamma, beta, mean, var = (
                self.float_const(node, k, what, 1)
                for k, what in enumerate(("scale", "bias", "mean", "var"), 1)
            )
            if not gamma.shape == beta.shape == mean.shape == var.shape:
                raise _error(origin, "scale, bias, mean and var must have one value per channel")
            params = BatchNormParams(gamma, beta, mean, var, float(a.get("epsilon", 1e-5)))
            return BatchNormOp(origin, params), y
        if op == "MaxPool":
            kernel = _ints(a.get("kernel_shape", ()))
            if len(kernel) != 2:
                raise _error(origin, "only 2-D max-pool is supported")
            strides = _ints(a.get("strides", (1, 1)))
            if (
                strides != kernel
                or any(_ints(a.get("pads", (0, 0, 0, 0))))
                or any(d != 1 for d in _ints(a.get("dilations", (1, 1))))
                or a.get("ceil_mode", 0)
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            ):
                raise _error(origin, "max-pool needs stride = kernel, no padding, dilation 1 and floor mode")
            return MaxPoolOp(origin, (kernel[0], kernel[1])), y
        if op == "GlobalAveragePool":
            return GlobalAvgPoolOp(origin), y
        if op == "ReduceMean":
            given = self.const(node, 1, "axes", optional=True)
            axes = _ints(a["axes"]) if "axes" in a else _ints(np.ravel(given)) if given is not None else ()
            if set(axes) not in ({2, 3}, {-2, -1}):
                raise _error(origin, f"only the mean over (H, W) is supported, got axes {list(axes)}")
            return GlobalAvgPoolOp(origin), y
        if op == "Flatten":
            if a.get("axis", 1) != 1:
                raise _error(origin, "only Flatten with axis 1 is supported")
            return FlattenOp(origin), y
        if op == "Reshape":
            shape = self.const(node, 1, "shape")
            assert shape is not None
            target = [int(v) for v in np.ravel(shape)]
            # [batch, F] or [batch, -1] keeps the batch; so does [0, ...] where 0 means "copy"
            keeps_batch = target[:1] == [self.batch] or (target[:1] == [0] and not a.get("allowzero", 0))
            if len(target) != 2 or not keeps_batch or not (target[1] == -1 or target[1] > 0):
                raise _error(origin, f"only a reshape that flattens (to [0, -1]) is supported, got {target}")
            return FlattenOp(origin), y
        if op == "Gemm":
            if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
                raise _error(origin, "only Gemm with alpha 1, beta 1 and transA 0 is supported")
            b = self.float_const(node, 1, "weight", 2)
            w = b if a.get("transB", 0) else b.T
            c = self.const(node, 2, "bias", optional=True)
            return DenseOp(origin, np.ascontiguousarray(w), self._bias(node, c, w.shape[0])), y
        if op == "MatMul":
            w = np.ascontiguousarray(self.float_const(node, 1, "weight", 2).T)
            add = self.only_consumer(y)
            other = [n for n in add.input if n != y] if add is not None and add.op_type == "Add" else []
            if add is not None and len(other) == 1 and other[0] in self.consts:  # the bias
                return DenseOp(origin, w, self._bias(add, self.consts[other[0]], w.shape[0])), add.output[0]
            return DenseOp(origin, w, None), y
        # GreaterOrEqual: the step
        zero = self.const(node, 1, "threshold")
        assert zero is not None
        if zero.size != 1 or float(zero.ravel()[0]) != 0.0:
            raise _error(origin, "a step compares with 0 (x >= 0)")
        cast = self.only_consumer(y)
        if cast is None or cast.op_type != "Cast" or _attrs(cast).get("to") not in _FLOAT_TYPES:
            raise _error(origin, "a step is GreaterOrEqual(x, 0) followed by a Cast to float")
        return StepOp(origin), cast.output[0]

    def _conv(self, node: onnx.NodeProto, a: Mapping[str, Any]) -> ConvOp:
        origin = self.origin(node)
        w = self.float_const(node, 1, "weight", 4)
        kernel = _ints(a.get("kernel_shape", w.shape[2:]))
        pads = _ints(a.get("pads", (0, 0, 0, 0)))
        if (
            a.get("group", 1) != 1
            or any(d != 1 for d in _ints(a.get("dilations", (1, 1))))
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or kernel != tuple(w.shape[2:])
            or len(pads) != 4
            or pads[0] != pads[2]
            or pads[1] != pads[3]
        ):
            raise _error(origin, "only 2-D convolutions with group 1, dilation 1 and symmetric explicit pads")
        strides = _ints(a.get("strides", (1, 1)))
        b = self.const(node, 2, "bias", optional=True)
        return ConvOp(
            origin, w, self._bias(node, b, w.shape[0]), (strides[0], strides[1]), (pads[0], pads[1])
        )

    def _bias(self, node: onnx.NodeProto, b: Arr | None, n: int) -> NDArray[np.float32] | None:
        if b is None:
            return None
        if b.size != n or b.dtype.kind not in "fiu" or (b.ndim > 1 and b.shape[-1] != n):
            raise _error(self.origin(node), f"the bias must have {n} values, got shape {b.shape}")
        return np.asarray(b, dtype=np.float32).reshape(n)


def network_from_onnx(
    data: bytes,
    *,
    name: str,
    version: str,
    class_names: Sequence[str],
    input_shape: Sequence[int] | None = None,
    preprocessing: Preprocessing | None = None,
    datasets: DatasetRefs | None = None,
    pass_limits: PassLimits | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> BinaryNetwork:
    """The :class:`BinaryNetwork` of an ONNX model's bytes (see the module docstring).

    ``input_shape`` (without the batch dimension) defaults to the graph input's static shape; where
    given it must agree with it. ``preprocessing`` defaults to ``Preprocessing("none")``. Raises
    :class:`UnsupportedOperatorError` for an operator outside the supported patterns and
    :class:`~app.nn.network.ModelFormatError` for bytes that are not a valid ONNX model (over
    :data:`MAX_ONNX_BYTES`, undecodable, failing ``onnx.checker``) or a graph that is not a chain.
    """
    graph = _Graph(_parse(data))
    start, shape = graph.input_shape(input_shape)
    return assembled_network(
        graph.ops(start),
        name=name,
        version=version,
        class_names=class_names,
        input_shape=shape,
        preprocessing=preprocessing,
        datasets=datasets,
        pass_limits=pass_limits,
        metrics=metrics,
        error=_error,
        describe=_describe,
    )
