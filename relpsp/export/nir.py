"""NIR export and import of ReL-PSP networks (the ``nir`` package is imported inside the functions).

The neuron (Zhang et al., IEEE TNNLS 2021): ``V_j(t) = sum_i w_ji * max(0, t - t_i)``, one spike at the
first t with ``V_j(t) >= theta``. As a circuit that is a non-leaky IF neuron driven by a step
(non-decaying) synaptic current, so each spiking layer becomes three NIR nodes:

    Linear (or Conv2d)  ->  I (r = 1: integrates the weighted input spikes into the step current
                               u_j(t) = sum_i w_ji H(t - t_i))
                        ->  IF (r = 1, v_threshold = theta: dv/dt = u, so v = V_j above)

Mapping table (``EXPORTERS``, one converter per layer type):

=============  ===================================================================================
relpsp layer   NIR nodes
=============  ===================================================================================
SimDense       ``Linear(weight)`` -> ``I`` -> ``IF``
SimConv        ``Conv2d(weight, stride, padding, bias = 0)`` -> ``I`` -> ``IF``
SimPool        ``SumPool2d(kernel, stride)`` -> ``IF(v_threshold = 0.5)``: without an integrator each
               input spike makes v jump by 1, so the IF fires at the first spike of its window, which
               is min-time pooling under the single-spike rule
SimFlatten     ``Flatten(start_dim = 0)``
=============  ===================================================================================

What NIR cannot express goes into node metadata (keys prefixed ``relpsp.``): on every IF,
``relpsp.single_spike`` (each neuron fires at most once; NIR's IF would reset and fire again),
``relpsp.t_max`` (spikes later than it are dropped; inf = none) and ``relpsp.op`` (``"relpsp_neuron"``
or ``"min_time_pool"``); on the Input node the latency coding (``relpsp.encoding = "latency"``,
``relpsp.t_in``, ``relpsp.zero_fires``: an intensity x fires at ``t_in * (1 - x)``) and, when exported
from a checkpoint, ``relpsp.data``: a JSON object with the dataset and the preprocessing the network was
trained with (``DATA_KEYS``: inversion, difference-of-Gaussians maps, image size, bias input), which
``relpsp simulate`` and ``relpsp cost`` apply to the images they feed it; on the graph,
``relpsp.arch`` and ``relpsp.version``. NIR's IF fires on ``v > v_threshold``, the model on
``v >= theta``; the two differ only when v touches theta without crossing it.

The reader (``network_from_nir``) accepts exactly these patterns, also from other tools: ``Affine`` with
a zero bias counts as ``Linear``; per-neuron ``r`` and ``v_threshold`` are folded into the weights
(``w_ji * r_I,j * r_IF,j * theta / v_threshold,j``); an IF without ``relpsp.t_max`` has no cut-off; the
single-spike rule is always applied. Anything else raises ``ValueError`` naming the node.

Files are untrusted input: before ``nir.read`` loads anything, a file whose datasets would expand to more
than ``MAX_NIR_BYTES`` when read (every name counted; a small compressed file can expand to gigabytes),
that points into other files, or that holds a node type without a ReL-PSP layer (some NIR constructors
broadcast their parameters into N x N arrays) is refused, and a file that is HDF5 but not a readable NIR graph raises
``ValueError``, not the reader's internal error.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from relpsp._fileio import check_output_file, why_not_a_file
from relpsp.checkpoint import atomic_write_with
from relpsp.sim.network import (
    SimConv,
    SimDense,
    SimFlatten,
    SimLayer,
    SimNetwork,
    SimPool,
    layer_output_shape,
    network_from_checkpoint,
)

__all__ = [
    "DATA_KEYS",
    "EXPORTERS",
    "MAX_NIR_BYTES",
    "export_nir",
    "network_from_nir",
    "nir_data_config",
    "read_nir",
    "read_nir_graph",
    "to_nir",
]

#: The ``[data]`` settings that decide what a trained network's input is; exported as ``relpsp.data``.
DATA_KEYS = ("dataset", "invert", "dog", "dog_sigmas", "dog_threshold", "image_size", "bias_input")
#: Most bytes the datasets of a NIR file may expand to when read (all names together): 2 GiB.
MAX_NIR_BYTES = 2**31
#: Deepest group nesting a NIR file may have (a relpsp export nests 4 deep).
_MAX_NIR_DEPTH = 32
_MAX_NIR_LINKS = 20_000  # names walked (hard links can make a small file name one group 2**depth times)
_MAX_NIR_VLEN_ITEMS = 100_000  # elements of variable-length datasets, each read alone to add up its size

_INSTALL_HINT = "NIR export needs the nir package: pip install 'relpsp[nir]' (or pip install nir)"
_POOL_THRESHOLD = 0.5


def _nir() -> Any:
    try:
        import nir
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(_INSTALL_HINT) from e
    return nir


def _weight_array(w: np.ndarray) -> np.ndarray:
    """float32 when that keeps every value exactly (checkpoints are float32), else float64."""
    w32 = w.astype(np.float32)
    return w32 if np.array_equal(w32.astype(np.float64), w) else w.copy()


def _if_node(nir: Any, shape: tuple[int, ...], threshold: float, meta: dict[str, Any]) -> Any:
    return nir.IF(
        r=np.ones(shape),
        v_threshold=np.full(shape, float(threshold)),
        v_reset=np.zeros(shape),
        metadata={"relpsp.single_spike": True, **meta},
    )


def _neuron_meta(t_max: float) -> dict[str, Any]:
    return {"relpsp.op": "relpsp_neuron", "relpsp.t_max": float(t_max)}


def _export_dense(nir: Any, layer: SimDense, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> list[Any]:
    return [
        nir.Linear(weight=_weight_array(layer.weight)),
        nir.I(r=np.ones(shape_out)),
        _if_node(nir, shape_out, layer.theta, _neuron_meta(layer.t_max)),
    ]


def _export_conv(nir: Any, layer: SimConv, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> list[Any]:
    return [
        nir.Conv2d(
            input_shape=(int(shape_in[1]), int(shape_in[2])),
            weight=_weight_array(layer.weight),
            stride=layer.stride,
            padding=layer.padding,
            dilation=1,
            groups=1,
            bias=np.zeros(layer.weight.shape[0], dtype=np.float32),
        ),
        nir.I(r=np.ones(shape_out)),
        _if_node(nir, shape_out, layer.theta, _neuron_meta(layer.t_max)),
    ]


def _export_pool(nir: Any, layer: SimPool, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> list[Any]:
    return [
        nir.SumPool2d(
            kernel_size=np.array([layer.kernel, layer.kernel]),
            stride=np.array([layer.step, layer.step]),
            padding=np.array([0, 0]),
        ),
        _if_node(nir, shape_out, _POOL_THRESHOLD, {"relpsp.op": "min_time_pool", "relpsp.t_max": math.inf}),
    ]


def _export_flatten(nir: Any, layer: SimFlatten, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> list[Any]:
    return [nir.Flatten(input_type={"input": np.array(shape_in)}, start_dim=0, end_dim=-1)]


#: layer type -> converter ``(nir, layer, shape_in, shape_out) -> [nodes]``
EXPORTERS: dict[type, Callable[..., list[Any]]] = {
    SimDense: _export_dense,
    SimConv: _export_conv,
    SimPool: _export_pool,
    SimFlatten: _export_flatten,
}

_NODE_SUFFIX = {
    "Linear": "linear",
    "Conv2d": "conv",
    "I": "i",
    "IF": "if",
    "SumPool2d": "sumpool",
    "Flatten": "flatten",
}


def to_nir(net: SimNetwork, metadata: dict[str, Any] | None = None, *, data: dict[str, Any] | None = None) -> Any:
    """The ``nir.NIRGraph`` of ``net`` (see the module docstring for the mapping). ``data``: the
    checkpoint's ``[data]`` section; its ``DATA_KEYS`` go into the Input node as ``relpsp.data``."""
    if net.window is not None:
        raise ValueError(
            "a windowed network (model.kernel = 'window') has no NIR form: its threshold falls within each layer's"
            " window and every neuron is forced to fire at the window's end, which NIR's neuron models do not express;"
            " the export handles ReL-PSP networks (relpsp simulate and relpsp cost run windowed ones)"
        )
    nir = _nir()
    from relpsp import __version__

    in_meta: dict[str, Any] = {
        "relpsp.encoding": "latency",
        "relpsp.t_in": net.t_in,
        "relpsp.zero_fires": net.zero_fires,
    }
    if data is not None:
        if not isinstance(data, dict):
            raise ValueError(f"data must be the [data] section as a dict, got {type(data).__name__}")
        in_meta["relpsp.data"] = json.dumps({k: data[k] for k in DATA_KEYS if k in data}, sort_keys=True)
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(net.input_shape)}, metadata=in_meta)}
    for i, layer in enumerate(net.layers):
        conv = EXPORTERS.get(type(layer))
        if conv is None:
            raise ValueError(f"cannot export layer {i} ({type(layer).__name__}) to NIR: no converter")
        for node in conv(nir, layer, net.shapes[i], net.shapes[i + 1]):
            nodes[f"{net.names[i + 1]}.{_NODE_SUFFIX[type(node).__name__]}"] = node
    nodes["output"] = nir.Output(output_type={"output": np.array(net.shapes[-1])})
    names = list(nodes)
    edges = list(itertools.pairwise(names))
    meta = {"relpsp.arch": net.arch, "relpsp.version": __version__, "relpsp.model": "ReL-PSP single-spike"}
    meta.update(metadata or {})
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def export_nir(
    source: SimNetwork | str | os.PathLike, path: str | os.PathLike, *, data: dict[str, Any] | None = None
) -> SimNetwork:
    """Write ``source`` (a network or a checkpoint path) as a NIR (HDF5) file at ``path``, atomically: a
    failed export leaves an existing file at ``path`` as it was. A checkpoint's ``[data]`` section goes
    into the file (``relpsp.data``) unless ``data`` is given; writing over ``source`` itself is refused.
    Returns the network written."""
    nir = _nir()
    check_output_file(path, *([] if isinstance(source, SimNetwork) else [source]), what="NIR file")
    if isinstance(source, SimNetwork):
        net = source
    else:
        net, meta = network_from_checkpoint(source)
        if data is None:
            data = (meta.get("config") or {}).get("data")
    graph = to_nir(net, data=data)
    atomic_write_with(path, lambda tmp: nir.write(str(tmp), graph))
    return net


def _chain(graph: Any) -> list[str]:
    """Node names from the Input to the Output; the graph must be a single path."""
    nir = _nir()
    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise ValueError(f"the NIR graph must have exactly one Input node, found {len(inputs)}: {inputs}")
    succ: dict[str, list[str]] = {}
    for a, b in graph.edges:
        for end in (a, b):
            if end not in graph.nodes:
                raise ValueError(f"the NIR graph has an edge {a!r} -> {b!r} to a node {end!r} it does not hold")
        succ.setdefault(a, []).append(b)
    order = [inputs[0]]
    while not isinstance(graph.nodes[order[-1]], nir.Output):
        nxt = succ.get(order[-1], [])
        if len(nxt) != 1:
            raise ValueError(
                f"NIR node {order[-1]!r} has {len(nxt)} successors {nxt}; only a single chain Input -> ... -> "
                "Output is supported"
            )
        if nxt[0] in order:
            raise ValueError(f"the NIR graph has a cycle through {nxt[0]!r}")
        order.append(nxt[0])
    if succ.get(order[-1]):
        raise ValueError(
            f"NIR Output node {order[-1]!r} has successors {succ[order[-1]]}; only a single chain Input -> ... -> "
            "Output is supported"
        )
    off_chain = sorted(set(graph.nodes) - set(order))
    if off_chain:
        raise ValueError(f"NIR nodes {off_chain} are not on the chain Input -> ... -> Output; not supported")
    return order


def _scalar(meta: dict[str, Any], key: str, default: Any, node: str) -> Any:
    """One metadata value (HDF5 gives scalars back as 0-d arrays and text as bytes), else ``ValueError``."""
    v = meta.get(key, default)
    if isinstance(v, np.ndarray):
        if v.size != 1:
            raise ValueError(f"NIR node {node!r}: metadata {key!r} must be one value, got an array of shape {v.shape}")
        v = v.item()
    if isinstance(v, bytes):
        try:
            v = v.decode()
        except UnicodeDecodeError as e:
            raise ValueError(f"NIR node {node!r}: metadata {key!r} is not UTF-8 text: {e}") from None
    return v


def _meta_float(meta: dict[str, Any], key: str, default: float, node: str) -> float:
    """A real-number metadata value (``inf`` allowed), else ``ValueError`` naming the node and key."""
    v = _scalar(meta, key, default, node)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or np.isnan(v):
        raise ValueError(f"NIR node {node!r}: metadata {key!r} must be a number, got {v!r}")
    return float(v)


def _meta_bool(meta: dict[str, Any], key: str, default: bool, node: str) -> bool:
    """A boolean metadata value (HDF5 may give it back as a numpy bool or a 0/1 integer), else ``ValueError``:
    a string such as ``"false"`` is not read as true."""
    v = _scalar(meta, key, default, node)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and v in (0, 1):
        return bool(v)
    raise ValueError(f"NIR node {node!r}: metadata {key!r} must be true or false, got {v!r}")


def _real(v: Any, what: str, node: str) -> np.ndarray:
    """A float64 array of real numbers, else ``ValueError``: complex values would lose their imaginary part
    and text would fail later without naming the node."""
    a = np.asarray(v)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"NIR node {node!r}: {what} must be real numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def _int_value(v: Any, what: str, node: str) -> int:
    """One integer (a scalar or a one-element array), else ``ValueError``."""
    try:
        a = np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"NIR node {node!r}: {what} must be an integer, got {v!r}") from None
    if a.size != 1 or not float(a[0]).is_integer():
        raise ValueError(f"NIR node {node!r}: {what} must be one integer, got {v!r}")
    return int(a[0])


def _pair_value(v: Any, what: str, node: str) -> int:
    """One integer for both image axes (a scalar or equal values), else ``ValueError``; 2.5 is not 2."""
    try:
        a = np.atleast_1d(np.asarray(v, dtype=np.float64)).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"NIR node {node!r}: {what} must be integers, got {v!r}") from None
    if not all(np.isfinite(a)) or not all(float(x).is_integer() for x in a):
        raise ValueError(f"NIR node {node!r}: {what} must be integers, got {v!r}")
    if a.size == 0 or not (a == a[0]).all():
        raise ValueError(f"NIR node {node!r}: only square {what} is supported, got {v!r}")
    return int(a[0])


def _neuron_gain(graph: Any, names: list[str], j: int, n_out_shape: tuple[int, ...]) -> tuple[np.ndarray, float, float]:
    """For ``names[j]`` = a weight node followed by I and IF: (per-neuron factor, theta, t_max)."""
    nir = _nir()
    if j + 2 >= len(names) or not isinstance(graph.nodes[names[j + 1]], nir.I):
        raise ValueError(
            f"NIR node {names[j]!r} must be followed by an I (integrator) node and an IF node (the ReL-PSP "
            f"neuron); found {type(graph.nodes[names[j + 1]]).__name__ if j + 1 < len(names) else 'nothing'}"
        )
    i_node, if_node = graph.nodes[names[j + 1]], graph.nodes[names[j + 2]]
    if not isinstance(if_node, nir.IF):
        raise ValueError(f"NIR node {names[j + 2]!r} must be an IF node after the integrator {names[j + 1]!r}")
    try:
        gain = np.broadcast_to(_real(i_node.r, "r", names[j + 1]) * _real(if_node.r, "r", names[j + 2]), n_out_shape)
        v_thr = np.broadcast_to(_real(if_node.v_threshold, "v_threshold", names[j + 2]), n_out_shape)
    except ValueError as e:
        raise ValueError(
            f"NIR nodes {names[j + 1]!r}/{names[j + 2]!r}: r and v_threshold must fit the {n_out_shape} "
            f"outputs of {names[j]!r} ({e})"
        ) from None
    if not (np.isfinite(v_thr).all() and (v_thr > 0).all()):
        raise ValueError(f"NIR node {names[j + 2]!r}: v_threshold must be finite and positive")
    if not (np.isfinite(gain).all() and (gain > 0).all()):
        raise ValueError(f"NIR nodes {names[j + 1]!r}/{names[j + 2]!r}: r must be finite and positive")
    meta = if_node.metadata or {}
    t_max = _meta_float(meta, "relpsp.t_max", math.inf, names[j + 2])
    theta = float(v_thr.flat[0])
    if (gain == 1).all() and (v_thr == theta).all():
        return np.ones(n_out_shape), theta, t_max
    return gain * (1.0 / v_thr), 1.0, t_max


def network_from_nir(graph: Any, *, t_in: float | None = None, zero_fires: bool | None = None) -> SimNetwork:
    """The simulator's network from a ``nir.NIRGraph`` (or a path to a NIR file). ``t_in`` and
    ``zero_fires`` override the Input node's ``relpsp.*`` metadata (defaults 1.0 and False). A graph
    this reader cannot take raises ``ValueError``, also where a field has a type nothing here expects."""
    nir = _nir()
    if isinstance(graph, (str, os.PathLike)):
        graph = read_nir_graph(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise ValueError(f"expected a nir.NIRGraph or a path, got {type(graph).__name__}")
    try:
        return _network_from_graph(graph, t_in, zero_fires)
    except (TypeError, KeyError, AttributeError, IndexError) as e:  # a field of a type no check above foresaw
        raise ValueError(f"malformed NIR graph ({type(e).__name__}: {e})") from e


def _network_from_graph(graph: Any, t_in: float | None, zero_fires: bool | None) -> SimNetwork:
    nir = _nir()
    names = _chain(graph)
    inp = graph.nodes[names[0]]
    shape = tuple(int(d) for d in np.asarray(inp.input_type["input"]).reshape(-1))
    in_meta = inp.metadata or {}
    t_in_v = float(t_in) if t_in is not None else _meta_float(in_meta, "relpsp.t_in", 1.0, names[0])
    zf = bool(zero_fires) if zero_fires is not None else _meta_bool(in_meta, "relpsp.zero_fires", False, names[0])
    layers: list[SimLayer] = []
    cur = shape
    j = 1
    while j < len(names) - 1:
        name, node = names[j], graph.nodes[names[j]]
        if isinstance(node, (nir.Linear, nir.Affine)):
            if isinstance(node, nir.Affine) and np.any(np.asarray(node.bias) != 0):
                raise ValueError(f"NIR node {name!r}: Affine with a non-zero bias has no ReL-PSP equivalent")
            w = _real(node.weight, "weight", name)
            if w.ndim != 2:
                raise ValueError(f"NIR node {name!r}: weight must be 2-D, got shape {w.shape}")
            factor, theta, t_max = _neuron_gain(graph, names, j, (w.shape[0],))
            layer: SimLayer = SimDense(w * factor[:, None] if not (factor == 1).all() else w, theta=theta, t_max=t_max)
            j += 3
        elif isinstance(node, nir.Conv2d):
            w = _real(node.weight, "weight", name)
            if w.ndim != 4:
                raise ValueError(f"NIR node {name!r}: Conv2d weight must be 4-D, got shape {w.shape}")
            if _pair_value(node.dilation, "dilation", name) != 1 or _int_value(node.groups, "groups", name) != 1:
                raise ValueError(f"NIR node {name!r}: dilation and groups must be 1")
            if node.bias is not None and np.any(np.asarray(node.bias) != 0):
                raise ValueError(f"NIR node {name!r}: Conv2d with a non-zero bias has no ReL-PSP equivalent")
            stride = _pair_value(node.stride, "stride", name)
            pad = node.padding
            if isinstance(pad, str):
                if pad == "valid":
                    padding = 0
                elif pad == "same" and stride == 1 and w.shape[2] % 2 == 1:
                    padding = (w.shape[2] - 1) // 2
                else:
                    raise ValueError(f"NIR node {name!r}: padding {pad!r} is not supported with this kernel/stride")
            else:
                padding = _pair_value(pad, "padding", name)
            if len(cur) != 3 or cur[0] != w.shape[1]:
                raise ValueError(
                    f"NIR node {name!r}: a Conv2d with {w.shape[1]} input channels needs a (C, H, W) input with "
                    f"C = {w.shape[1]}, got shape {cur}"
                )
            if stride < 1 or padding < 0 or w.shape[2] != w.shape[3]:
                raise ValueError(f"NIR node {name!r}: needs a square kernel, stride >= 1 and padding >= 0")
            out_shape = (
                w.shape[0],
                (cur[1] + 2 * padding - w.shape[2]) // stride + 1,
                (cur[2] + 2 * padding - w.shape[2]) // stride + 1,
            )
            if min(out_shape) < 1:
                raise ValueError(f"NIR node {name!r}: a {w.shape[2]}x{w.shape[3]} kernel does not fit its input {cur}")
            factor, theta, t_max = _neuron_gain(graph, names, j, out_shape)
            if not (factor == 1).all():
                f_c = factor.reshape(factor.shape[0], -1)
                if not (f_c == f_c[:, :1]).all():
                    raise ValueError(f"NIR nodes after {name!r}: per-position r or v_threshold cannot be shared-weight")
                w = w * f_c[:, 0][:, None, None, None]
            layer = SimConv(w, stride=stride, padding=padding, theta=theta, t_max=t_max)
            j += 3
        elif isinstance(node, nir.SumPool2d):
            if np.any(np.asarray(node.padding) != 0):
                raise ValueError(f"NIR node {name!r}: pooling with padding is not supported")
            nxt = graph.nodes[names[j + 1]] if j + 1 < len(names) else None
            if not isinstance(nxt, nir.IF):
                raise ValueError(
                    f"NIR node {name!r}: SumPool2d must be followed by an IF node (min-time pooling); "
                    f"found {type(nxt).__name__}"
                )
            thr = _real(nxt.v_threshold, "v_threshold", names[j + 1])
            if not ((thr > 0) & (thr < _real(nxt.r, "r", names[j + 1]))).all():
                raise ValueError(
                    f"NIR node {names[j + 1]!r}: an IF after SumPool2d acts as min-time pooling only with "
                    "0 < v_threshold < r (fires at the first input spike)"
                )
            layer = SimPool(
                _pair_value(node.kernel_size, "kernel_size", name), _pair_value(node.stride, "stride", name)
            )
            j += 2
        elif isinstance(node, nir.Flatten):
            # start_dim is not checked: tools differ on whether it counts a batch axis (NIR's default is
            # 1); every axis is flattened, and a following Linear of the wrong width is refused by name.
            layer = SimFlatten()
            j += 1
        else:
            raise ValueError(
                f"NIR node {name!r} of type {type(node).__name__} has no ReL-PSP equivalent (supported: "
                "Linear/Affine -> I -> IF, Conv2d -> I -> IF, SumPool2d -> IF, Flatten)"
            )
        layers.append(layer)
        cur = layer_output_shape(layer, cur, len(layers) - 1)
    g_meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    arch = str(_scalar(g_meta, "relpsp.arch", "", "the graph"))
    return SimNetwork(tuple(layers), shape, t_in=t_in_v, zero_fires=zf, arch=arch)


def _check_size(path: Path) -> None:
    """Refuse, before any value is read, a file that could expand to more than ``MAX_NIR_BYTES``; then, in
    the same open file, one with a node type the reader has no layer for (``_check_node_types``).

    The tree is walked the way ``nir.read`` walks it, by name, so a dataset reached through several links
    counts once per name, and more than ``_MAX_NIR_LINKS`` names are refused. A dataset of fixed-size
    items costs its shape times its item size (an array-typed or fixed-string item of one element counts in
    full). Variable-length items are stored as references, and many references may name one large heap
    object, so such a dataset is read one item at a time (each item is bounded by the file's size) and
    costs the sum of its items' sizes; more than ``_MAX_NIR_VLEN_ITEMS`` of them are refused. External
    links, external raw storage and virtual datasets (which would make the reader open other files) are
    refused, and so is a tree deeper than ``_MAX_NIR_DEPTH``.
    """
    import h5py

    total = 0
    links = 0
    vlen_items = 0

    def add(nbytes: int, name: str) -> None:
        nonlocal total
        total += nbytes
        if total > MAX_NIR_BYTES:
            raise ValueError(
                f"{path}: the datasets would expand to more than {MAX_NIR_BYTES} bytes (reached at "
                f"{name!r}); refused as too large for a NIR network file"
            )

    def walk(group: Any, prefix: str, depth: int) -> None:
        nonlocal links, vlen_items
        if depth > _MAX_NIR_DEPTH:
            raise ValueError(f"{path}: groups nested deeper than {_MAX_NIR_DEPTH} at {prefix!r}; refused")
        for key in group:
            name = f"{prefix}/{key}"
            links += 1
            if links > _MAX_NIR_LINKS:
                raise ValueError(f"{path}: more than {_MAX_NIR_LINKS} names to walk (at {name!r}); refused")
            if isinstance(group.get(key, getlink=True), h5py.ExternalLink):
                raise ValueError(f"{path}: {name!r} links to another file; refused")
            item = group[key]
            if isinstance(item, h5py.Group):
                walk(item, name, depth + 1)
            elif isinstance(item, h5py.Dataset):
                if item.is_virtual or item.external:
                    raise ValueError(f"{path}: {name!r} stores its data in other files; refused")
                size = int(item.size or 0)
                if not item.dtype.hasobject:
                    add(size * int(item.dtype.itemsize), name)
                    continue
                vlen_items += size
                if vlen_items > _MAX_NIR_VLEN_ITEMS:
                    raise ValueError(
                        f"{path}: more than {_MAX_NIR_VLEN_ITEMS} variable-length items (at {name!r}); refused"
                    )
                for index in np.ndindex(item.shape or ()):
                    add(_item_bytes(item[index]), name)

    try:
        with h5py.File(path, "r") as f:
            walk(f, "", 0)
            _check_node_types(f, path)
    except (OSError, KeyError, RecursionError) as e:  # KeyError: a dangling soft link
        raise ValueError(f"{path} is not a readable HDF5 (NIR) file: {type(e).__name__}: {e}") from e


#: NIR node types the reader maps to ReL-PSP layers; a file with any other is refused before ``nir.read``
#: builds its nodes (some constructors broadcast their parameters: a few-KB ``CubaLIF`` can allocate N x N).
_READABLE_NODE_TYPES = frozenset({"Input", "Output", "Linear", "Affine", "Conv2d", "I", "IF", "SumPool2d", "Flatten"})


def _check_node_types(f: Any, path: Path) -> None:
    """Refuse a file (open as ``f``, its size already checked) whose graph holds a node type outside
    ``_READABLE_NODE_TYPES``, read from each node's ``type`` dataset, naming the node. A layout other than
    ``nir.write``'s is left to ``nir.read`` to refuse."""
    import h5py

    nodes = f.get("node/nodes")
    if not isinstance(nodes, h5py.Group):
        return
    for key in nodes:
        item = nodes[key]
        kind = item.get("type") if isinstance(item, h5py.Group) else None
        if not isinstance(kind, h5py.Dataset) or kind.shape != ():
            continue
        value = kind[()]
        name = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if name not in _READABLE_NODE_TYPES:
            raise ValueError(
                f"{path}: NIR node {key!r} of type {name[:40]!r} has no ReL-PSP equivalent (readable: "
                f"{', '.join(sorted(_READABLE_NODE_TYPES))}); refused before reading its parameters"
            )


def _item_bytes(v: Any) -> int:
    """The memory a value read from a variable-length dataset holds (bytes, str, arrays, compound records)."""
    if isinstance(v, (bytes, str)):
        return len(v)
    if isinstance(v, np.ndarray) and not v.dtype.hasobject:
        return int(v.nbytes)
    if isinstance(v, np.ndarray):
        return sum(_item_bytes(x) for x in v.ravel())
    if isinstance(v, np.void):  # a compound record: its fields as a tuple
        return _item_bytes(v.item())
    if isinstance(v, (tuple, list)):
        return sum(_item_bytes(x) for x in v)
    return 8


def read_nir_graph(path: str | os.PathLike) -> Any:
    """``nir.read(path)`` for an untrusted file: its size is checked first (``MAX_NIR_BYTES``) and a
    file that is not a NIR graph raises ``ValueError``."""
    nir = _nir()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} {why_not_a_file(p)}")
    _check_size(p)  # and the node types
    try:
        return nir.read(str(p))
    except Exception as e:  # an untrusted file: whatever nir.read trips on (KeyError, OSError from HDF5 for a
        # corrupt chunk, OverflowError from a stride of 0 in its shape inference, ...) means the same to the caller
        raise ValueError(f"{p} is not a valid NIR file: {type(e).__name__}: {e}") from e


def nir_data_config(graph: Any) -> dict[str, Any] | None:
    """The ``[data]`` settings in the Input node's ``relpsp.data`` (a dict of ``DATA_KEYS``), or None when
    the graph has none (a file from another tool, or a network exported without a checkpoint)."""
    nir = _nir()
    inputs = [(k, n) for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    raw = _scalar(inputs[0][1].metadata or {}, "relpsp.data", None, inputs[0][0]) if len(inputs) == 1 else None
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the NIR Input node's relpsp.data is not JSON: {e}") from e
    if not isinstance(data, dict) or set(data) - set(DATA_KEYS):
        raise ValueError(f"the NIR Input node's relpsp.data must be an object with keys among {DATA_KEYS}, got {raw!r}")
    return data


def read_nir(path: str | os.PathLike, *, t_in: float | None = None, zero_fires: bool | None = None) -> SimNetwork:
    """Read a NIR file into the simulator's network (see ``network_from_nir``)."""
    return network_from_nir(read_nir_graph(path), t_in=t_in, zero_fires=zero_fires)
