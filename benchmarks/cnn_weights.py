"""The CNN's weights out of a frozen ``model.pb``, and the layout a channels-first copy of it needs.

A peer library that runs the network itself (PyTorch for AutoAttack) gets the weights as
arrays (:func:`export_weights`) and rebuilds the network channels-first (NCHW). Two
things differ from the TensorFlow graph, which is channels-last (NHWC):

- convolution kernels are stored (height, width, in, out) and a channels-first library
  wants (out, in, height, width): :data:`HWIO_TO_OIHW`;
- the first dense layer reads the pooled features flattened in NHWC order (height, then
  width, then channel), so a channels-first copy must move the channels last before it
  flattens: :data:`NCHW_TO_NHWC`. Flattening NCHW directly gives other logits.

:func:`forward` is that channels-first network in numpy, the same steps as the PyTorch
copy in ``peer_autoattack.py``, so a test can check the layout against the frozen graph
without PyTorch. This module imports only numpy at the top: the peer's process (which
has no TensorFlow) imports it too.
"""
from __future__ import annotations

import numpy as np

#: Axis order taking a (height, width, in, out) kernel to (out, in, height, width).
HWIO_TO_OIHW = (3, 2, 0, 1)
#: Axis order taking (N, channels, height, width) features to (N, height, width, channels).
NCHW_TO_NHWC = (0, 2, 3, 1)

#: The layers of advmnist's CNN from input to logits: (name, op, weight shape, bias shape).
LAYERS = (("conv0", "Conv2D", (3, 3, 1, 32), (32,)),
          ("conv1", "Conv2D", (3, 3, 32, 64), (64,)),
          ("fc0", "MatMul", (9216, 128), (128,)),
          ("fc1", "MatMul", (128, 10), (10,)))
#: The ops on the path from input to logits, in order, once pass-through ops are skipped.
OP_CHAIN = ("Conv2D", "BiasAdd", "Relu", "Conv2D", "BiasAdd", "Relu", "MaxPool",
            "MatMul", "BiasAdd", "Relu", "MatMul", "BiasAdd")
PASS_THROUGH = ("Identity", "Reshape", "ExpandDims")
ARCHITECTURE = "conv 3x3x1x32 + bias, ReLU, conv 3x3x32x64 + bias, ReLU, max-pool 2, dense 9216x128 + bias, " \
               "ReLU, dense 128x10 + bias"


class ArchitectureError(ValueError):
    """The frozen graph is not advmnist's CNN; the message says what differs."""


def _node_chain(graph_def, input_name: str, logits_name: str) -> tuple[list, dict]:
    """The nodes from the input to the logits along each op's first input, and every node by name."""
    nodes = {node.name: node for node in graph_def.node}
    name, chain = logits_name.split(":")[0], []
    while name != input_name.split(":")[0]:
        node = nodes.get(name)
        if node is None or not node.input or len(chain) > len(nodes):
            raise ArchitectureError(f"the logits do not come from {input_name}: the path stops at {name!r}; "
                                    f"expected {ARCHITECTURE}")
        chain.append(node)
        name = node.input[0].split(":")[0].lstrip("^")
    return chain[::-1], nodes


def _constant(nodes: dict, name: str) -> np.ndarray:
    from advmnist.tfcompat import tf1

    node = nodes[name.split(":")[0]]
    while node.op == "Identity":
        node = nodes[node.input[0].split(":")[0]]
    if node.op != "Const":
        raise ArchitectureError(f"expected a constant weight behind {name!r}, got a {node.op} op "
                                "(is the graph frozen?)")
    return tf1().make_ndarray(node.attr["value"].tensor)


def _check_attributes(node) -> None:
    attr = node.attr
    if node.op == "Conv2D":
        ok = (attr["padding"].s == b"VALID" and list(attr["strides"].list.i) == [1, 1, 1, 1]
              and attr["data_format"].s in (b"", b"NHWC"))
    elif node.op == "MaxPool":
        ok = (attr["padding"].s == b"VALID" and list(attr["ksize"].list.i) == [1, 2, 2, 1]
              and list(attr["strides"].list.i) == [1, 2, 2, 1] and attr["data_format"].s in (b"", b"NHWC"))
    elif node.op == "MatMul":
        ok = not attr["transpose_a"].b and not attr["transpose_b"].b
    else:
        ok = True
    if not ok:
        raise ArchitectureError(f"{node.name} ({node.op}) has other settings than advmnist's CNN "
                                f"(valid padding, stride 1, NHWC; pool 2x2 stride 2; dense without transpose)")


def export_weights(graph_def, input_name: str, logits_name: str) -> dict[str, np.ndarray]:
    """The eight weight arrays of advmnist's CNN, found by op type and order on the path input -> logits.

    Keys ``conv0_w, conv0_b, conv1_w, conv1_b, fc0_w, fc0_b, fc1_w, fc1_b`` (layers by position,
    not by the graph's names), float32, in TensorFlow's layout.

    Raises:
        ArchitectureError: the path is not :data:`ARCHITECTURE` (other ops, settings or shapes).
    """
    chain, nodes = _node_chain(graph_def, input_name, logits_name)
    ops = [node for node in chain if node.op not in PASS_THROUGH]
    if tuple(node.op for node in ops) != OP_CHAIN:
        raise ArchitectureError(f"expected {ARCHITECTURE}, got the ops {' -> '.join(n.op for n in ops)}")
    weighted = [node for node in ops if node.op in ("Conv2D", "MatMul")]
    biases = [node for node in ops if node.op == "BiasAdd"]
    weights = {}
    for (name, _, w_shape, b_shape), layer, bias in zip(LAYERS, weighted, biases):
        _check_attributes(layer)
        w, b = _constant(nodes, layer.input[1]), _constant(nodes, bias.input[1])
        if w.shape != w_shape or b.shape != b_shape:
            raise ArchitectureError(f"layer {name} ({layer.name}): expected weights {w_shape} and bias {b_shape}, "
                                    f"got {w.shape} and {b.shape} ({ARCHITECTURE})")
        weights[f"{name}_w"], weights[f"{name}_b"] = w.astype(np.float32), b.astype(np.float32)
    _check_attributes(next(node for node in ops if node.op == "MaxPool"))
    return weights


def channels_first(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights as a channels-first network takes them: kernels (out, in, h, w); dense layers as they are."""
    return {k: (np.ascontiguousarray(v.transpose(HWIO_TO_OIHW)) if v.ndim == 4 else v) for k, v in weights.items()}


def _conv_nchw(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A valid, stride-1 convolution of (N, C, H, W) with an (out, C, kh, kw) kernel."""
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[2:], axis=(2, 3))  # N C H' W' kh kw
    return np.einsum("nchwij,ocij->nohw", windows, kernel, optimize=True) + bias[None, :, None, None]


def forward(weights: dict[str, np.ndarray], images: np.ndarray, *, flatten_order=NCHW_TO_NHWC) -> np.ndarray:
    """Logits (N, 10) of the channels-first copy for images (N, 28, 28), in float64.

    ``flatten_order``: the axes the pooled (N, C, H, W) features are put in before they are
    flattened; only :data:`NCHW_TO_NHWC` matches the graph (a test passes another to see it fail).
    """
    w = {k: v.astype(np.float64) for k, v in channels_first(weights).items()}
    x = np.asarray(images, np.float64)[:, None]
    x = np.maximum(_conv_nchw(x, w["conv0_w"], w["conv0_b"]), 0)
    x = np.maximum(_conv_nchw(x, w["conv1_w"], w["conv1_b"]), 0)
    n, c, h, wd = x.shape
    x = x.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
    x = x.transpose(flatten_order).reshape(n, -1)
    x = np.maximum(x @ w["fc0_w"] + w["fc0_b"], 0)
    return x @ w["fc1_w"] + w["fc1_b"]
