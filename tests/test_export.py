"""NIR export (``relpsp.export.nir``): round trip checkpoint -> NIR file -> simulator equals the checkpoint
and the torch model; metadata; the reader's folding and errors; ``relpsp export`` end to end."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from relpsp import cli  # noqa: E402
from relpsp.checkpoint import save_checkpoint  # noqa: E402
from relpsp.config import Config, ModelConfig, config_to_dict  # noqa: E402
from relpsp.export.nir import (  # noqa: E402
    DATA_KEYS,
    EXPORTERS,
    export_nir,
    network_from_nir,
    nir_data_config,
    read_nir,
    read_nir_graph,
    to_nir,
)
from relpsp.models import build_model, layer_outputs, model_arrays  # noqa: E402
from relpsp.sim import SimDense, SimNetwork, SimOptions, network_from_checkpoint, simulate  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.test_sim import _images, _tiny_checkpoint, yinyang_bias_checkpoint  # noqa: E402

NETWORKS = [
    pytest.param("20-12-5", (1, 4, 5), math.inf, id="mlp"),
    pytest.param("3C3p1-P2-4C3s2-12-5", (2, 9, 9), 2.0, id="cnn-t_max"),
]


def _checkpoint(tmp_path, arch, shape, t_max):
    torch.manual_seed(0)
    kw = dict(t_max=t_max, t_in=1.5, zero_fires=True)
    model = build_model(arch, shape, init_mean=3.0, init_std=2.0, **kw)
    cfg = Config(model=ModelConfig(arch=arch, input_shape=shape, **kw))
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model_arrays(model), {"config": config_to_dict(cfg), "version": "0.1.0"})
    with torch.no_grad():  # the checkpoint holds float32 weights; so must the reference model
        for p in model.parameters():
            p.copy_(p.float())
    return path, model.double()


@pytest.mark.parametrize(("arch", "shape", "t_max"), NETWORKS)
def test_round_trip_same_spike_times(tmp_path, arch, shape, t_max):
    ckpt, model = _checkpoint(tmp_path, arch, shape, t_max)
    out = tmp_path / "m.nir"
    export_nir(ckpt, out)
    graph = nir.read(str(out))
    net_nir = network_from_nir(graph)
    net_ckpt, _ = network_from_checkpoint(ckpt)
    assert net_nir.t_in == 1.5 and net_nir.zero_fires is True and net_nir.arch == arch
    assert [type(a) for a in net_nir.layers] == [type(b) for b in net_ckpt.layers]
    x = _images(shape)
    a = simulate(net_nir, x, record_layers=True)
    b = simulate(net_ckpt, x, record_layers=True)
    for ta, tb in zip(a.layer_times, b.layer_times):
        np.testing.assert_array_equal(ta, tb)
    # ... and the torch model, to float64 rounding.
    with torch.no_grad():
        expected = [o.numpy() for o in layer_outputs(model, torch.from_numpy(x))]
    for name, got, exp in zip(net_nir.names, a.layer_times, expected):
        assert_close(f"nir {name}", got.reshape(exp.shape), exp, torch.float64)
    assert np.isfinite(a.t_out).any()


def test_a_failed_export_leaves_the_previous_file(tmp_path, monkeypatch):
    """The file is written beside the target and renamed: an export that fails part-way (here the HDF5
    writer, after creating its file) leaves the earlier export readable and no temporary file."""
    ckpt, _ = _checkpoint(tmp_path, "20-12-5", (1, 4, 5), math.inf)
    out = tmp_path / "m.nir"
    export_nir(ckpt, out)
    good = out.read_bytes()

    def broken_write(path, graph):
        with open(path, "wb") as f:
            f.write(b"half an HDF5 file")
        raise OSError("disk full")

    monkeypatch.setattr(nir, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        export_nir(ckpt, out)
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.nir"]
    monkeypatch.undo()
    assert read_nir(out).arch == "20-12-5"


def test_metadata_and_node_mapping(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, "3C3p1-P2-4C3s2-12-5", (2, 9, 9), 2.0)
    net, _ = network_from_checkpoint(ckpt)
    graph = to_nir(net)
    kinds = {k: type(v).__name__ for k, v in graph.nodes.items()}
    assert kinds["conv1.conv"] == "Conv2d" and kinds["conv1.i"] == "I" and kinds["conv1.if"] == "IF"
    assert kinds["pool1.sumpool"] == "SumPool2d" and kinds["pool1.if"] == "IF" and "pool1.i" not in kinds
    assert kinds["dense2.linear"] == "Linear" and kinds["flatten1.flatten"] == "Flatten"
    meta = graph.nodes["dense2.if"].metadata
    assert meta["relpsp.single_spike"] is True and meta["relpsp.t_max"] == 2.0 and meta["relpsp.op"] == "relpsp_neuron"
    assert graph.nodes["pool1.if"].metadata["relpsp.op"] == "min_time_pool"
    assert graph.nodes["input"].metadata["relpsp.t_in"] == 1.5
    assert graph.metadata["relpsp.arch"] == net.arch
    np.testing.assert_array_equal(graph.nodes["conv2.conv"].stride, [2, 2])
    assert set(EXPORTERS) == {type(layer) for layer in net.layers}
    # t_max = inf survives the HDF5 file.
    net_inf = SimNetwork((SimDense(np.ones((2, 3))),), (3,))
    export_nir(net_inf, tmp_path / "inf.nir")
    assert read_nir(tmp_path / "inf.nir").layers[0].t_max == math.inf


def test_reader_folds_gains_into_weights():
    w = np.array([[0.8, -0.2, 0.5], [0.3, 0.9, 0.1]])
    graph = nir.NIRGraph.from_list(
        nir.Linear(weight=w),
        nir.I(r=np.array([2.0, 1.0])),
        nir.IF(r=np.array([1.0, 3.0]), v_threshold=np.array([4.0, 1.5])),
    )
    net = network_from_nir(graph)
    layer = net.layers[0]
    assert isinstance(layer, SimDense) and layer.theta == 1.0 and layer.t_max == math.inf
    np.testing.assert_allclose(layer.weight, w * np.array([[2.0 / 4.0], [3.0 / 1.5]]))


def test_reader_rejects_what_it_cannot_run():
    w = np.ones((2, 3))
    no_integrator = nir.NIRGraph.from_list(nir.Linear(weight=w), nir.IF(r=np.ones(2), v_threshold=np.ones(2)))
    with pytest.raises(ValueError, match="I \\(integrator\\)"):
        network_from_nir(no_integrator)
    lif = nir.NIRGraph.from_list(
        nir.Linear(weight=w), nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2))
    )
    with pytest.raises(ValueError, match="LIF"):
        network_from_nir(lif)
    biased = nir.NIRGraph.from_list(
        nir.Affine(weight=w, bias=np.ones(2)), nir.I(r=np.ones(2)), nir.IF(r=np.ones(2), v_threshold=np.ones(2))
    )
    with pytest.raises(ValueError, match="bias"):
        network_from_nir(biased)


def test_cli_export_then_simulate_nir(tmp_path, capsys):
    ckpt, data = _tiny_checkpoint(tmp_path)
    out = tmp_path / "tiny.nir"
    assert cli.main(["export", str(ckpt), "--format", "nir", str(out)]) == 0
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli.main(["simulate", str(ckpt), "--dataset", str(data), "--out", str(a)]) == 0
    assert cli.main(["simulate", str(out), "--dataset", str(data), "--out", str(b)]) == 0
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ja["accuracy"] == jb["accuracy"] and ja["mean_decision_time"] == jb["mean_decision_time"]
    assert ja["layers"] == jb["layers"]
    # The file names the checkpoint's dataset; one written from a bare network (or another tool) names
    # none. Neither has a torch model to compare with.
    assert nir_data_config(read_nir_graph(out))["dataset"] == "mnist"
    bare = tmp_path / "bare.nir"
    export_nir(network_from_checkpoint(ckpt)[0], bare)
    assert nir_data_config(read_nir_graph(bare)) is None
    capsys.readouterr()
    assert cli.main(["simulate", str(bare)]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert cli.main(["simulate", str(out), "--dataset", str(data), "--compare"]) == 2
    # OUT = CKPT would replace the checkpoint by the NIR file: refused, the checkpoint kept.
    before = ckpt.read_bytes()
    assert cli.main(["export", str(ckpt), str(tmp_path / "." / ckpt.name)]) == 2
    assert "would overwrite" in capsys.readouterr().err and ckpt.read_bytes() == before
    assert cli.main(["export", str(ckpt), str(tmp_path)]) == 2  # a folder: refused before any work
    assert f"the NIR file {tmp_path} is a folder" in capsys.readouterr().err


def test_nir_file_carries_the_data_settings_of_its_checkpoint(tmp_path, capsys):
    """A Yin-Yang network trained with a bias input (5 inputs): its NIR file, simulated on the dataset by
    name, gets the bias column as the checkpoint does, so both runs see the same inputs."""
    ckpt, _ = yinyang_bias_checkpoint(tmp_path)
    out = tmp_path / "yy.nir"
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    data = nir_data_config(read_nir_graph(out))
    assert (
        data is not None and data["dataset"] == "yinyang" and data["bias_input"] == 0.5 and set(data) <= set(DATA_KEYS)
    )
    runs = {}
    for name, src in (("ckpt", ckpt), ("nir", out)):
        js = tmp_path / f"{name}.json"
        assert cli.main(["simulate", str(src), "--limit", "60", "--out", str(js)]) == 0, capsys.readouterr().err
        runs[name] = json.loads(js.read_text())
    assert runs["nir"]["dataset"] == "yinyang" and runs["nir"]["n_images"] == 60
    for key in ("accuracy", "mean_decision_time", "layers"):
        assert runs["nir"][key] == runs["ckpt"][key], key


def _broken_nir(tmp_path, name, edit, arch=("20-12-5", (1, 4, 5), math.inf)):
    """The exported file of a small MLP (or of ``arch``: string, input shape, t_max) with
    ``edit(h5py.File)`` applied."""
    import h5py

    ckpt, _ = _checkpoint(tmp_path, *arch)
    path = tmp_path / name
    export_nir(ckpt, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


CNN = ("3C3p1-P2-4C3s2-12-5", (2, 9, 9), 2.0)


def _replace(key: str, value):
    """An edit for ``_broken_nir``: the dataset ``key`` replaced by ``value``."""

    def edit(f):
        del f[key]
        f[key] = value

    return edit


def test_malformed_nir_files_raise_value_error(tmp_path, capsys):
    """HDF5 files that are not NIR graphs, or that lost a dataset, give ``ValueError`` (one CLI line), not
    the reader's KeyError/TypeError/AssertionError."""
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1]
    no_weight = _broken_nir(tmp_path, "w.nir", lambda f: f.__delitem__("node/nodes/dense1.linear/weight"))
    no_edges = _broken_nir(tmp_path, "e.nir", lambda f: f.__delitem__("node/edges"))
    for path in (other, no_weight, no_edges):
        with pytest.raises(ValueError, match="is not a valid NIR file"):
            read_nir(path)
        capsys.readouterr()
        assert cli.main(["simulate", str(path), "--dataset", "yinyang"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("relpsp: error:") and "not a valid NIR file" in err


def _replace_meta(key: str, make):
    """An edit for ``_broken_nir``: the metadata ``key`` (``"node/nodes/<node>/metadata/<name>"``) replaced
    by ``make(group, name)``."""

    def edit(f):
        group_path, name = key.rsplit("/", 1)
        del f[key]
        make(f[group_path], name)

    return edit


def test_metadata_of_the_wrong_type_is_refused_not_misread(tmp_path, capsys):
    """A cut-off or window that is not a number, a zero_fires flag that is the string "false" (which bool()
    would read as true), a Conv2d groups field of two values: each one CLI error line naming the node."""
    import h5py

    cases = {
        "tmax.nir": (
            _replace_meta("node/nodes/dense1.if/metadata/relpsp.t_max", lambda g, n: g.create_group(n)),
            "'dense1.if': metadata 'relpsp.t_max' must be a number",
        ),
        "tin.nir": (
            _replace_meta("node/nodes/input/metadata/relpsp.t_in", lambda g, n: g.create_dataset(n, data="1.0")),
            "'input': metadata 'relpsp.t_in' must be a number",
        ),
        "zf.nir": (
            _replace_meta(
                "node/nodes/input/metadata/relpsp.zero_fires",
                lambda g, n: g.create_dataset(n, data="false", dtype=h5py.string_dtype()),
            ),
            "'input': metadata 'relpsp.zero_fires' must be true or false",
        ),
    }
    for name, (edit, needle) in cases.items():
        path = _broken_nir(tmp_path, name, edit)
        with pytest.raises(ValueError, match=re.escape(needle)):
            network_from_nir(read_nir_graph(path))
        capsys.readouterr()
        assert cli.main(["simulate", str(path), "--dataset", "yinyang"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("relpsp: error:") and needle in err and "\n" not in err.strip()
    path = _broken_nir(tmp_path, "groups.nir", _replace("node/nodes/conv1.conv/groups", np.array([1, 1])), CNN)
    with pytest.raises(ValueError, match=r"'conv1\.conv': groups must be one integer"):
        network_from_nir(read_nir_graph(path))


def test_exported_boolean_metadata_reads_back_as_written(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, "20-12-5", (1, 4, 5), math.inf)
    path = tmp_path / "m.nir"
    export_nir(ckpt, path)
    assert network_from_nir(read_nir_graph(path)).zero_fires is True  # _checkpoint's setting
    assert network_from_nir(read_nir_graph(path), zero_fires=False).zero_fires is False


def _refuse_nir_read(monkeypatch, limit):
    import relpsp.export.nir as nir_module

    monkeypatch.setattr(nir_module, "MAX_NIR_BYTES", limit)
    monkeypatch.setattr(nir, "read", lambda *a, **k: pytest.fail("nir.read ran on a refused file"))


def test_oversized_nir_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A compressed dataset that would expand past ``MAX_NIR_BYTES`` is refused before ``nir.read``."""

    def bomb(f):
        del f["node/nodes/dense1.linear/weight"]
        f.create_dataset("node/nodes/dense1.linear/weight", shape=(3000, 3000), dtype="f8", compression="gzip")

    path = _broken_nir(tmp_path, "big.nir", bomb)
    assert path.stat().st_size < 200_000  # small on disk, 72 MB when read
    _refuse_nir_read(monkeypatch, 50_000_000)
    with pytest.raises(ValueError, match="more than 50000000 bytes"):
        read_nir(path)


def test_a_node_type_without_a_relpsp_layer_is_refused_before_nir_builds_it(tmp_path, monkeypatch):
    """nir.CubaLIF broadcasts w_in (N, 1) against v_threshold (N,) into N x N when it is built: a file of a
    few kB used to pass the size check and allocate N^2 x 8 bytes before the type was refused."""

    def cuba(f):
        node = f["node/nodes/dense1.if"]
        del node["type"]
        node.create_dataset("type", data="CubaLIF")

    path = _broken_nir(tmp_path, "cuba.nir", cuba)
    _refuse_nir_read(monkeypatch, 2**31)
    with pytest.raises(ValueError, match=r"NIR node 'dense1.if' of type 'CubaLIF' has no ReL-PSP equivalent"):
        read_nir(path)


def test_reading_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):
        read_nir(tmp_path)


@pytest.mark.parametrize("kind", ["array-item", "fixed-string", "hard-links"])
def test_nir_files_that_expand_through_item_size_or_links_are_refused(tmp_path, monkeypatch, kind):
    """One element of an array type or a long fixed string counts by its bytes, not as one value; a
    dataset reached through several names (``nir.read`` reads each) counts once per name."""

    def edit(f):
        meta = f.require_group("node/nodes/input/metadata")
        if kind == "array-item":
            meta.create_dataset("x", shape=(1,), dtype=np.dtype(("f8", (1000, 1000))), compression="gzip")
        elif kind == "fixed-string":
            meta.create_dataset("x", shape=(1,), dtype="S8000000", compression="gzip")
        else:
            meta.create_dataset("x", shape=(1000, 1000), dtype="f8", compression="gzip")
            for k in range(5):
                meta[f"x{k}"] = meta["x"]

    path = _broken_nir(tmp_path, f"{kind}.nir", edit)
    assert path.stat().st_size < 200_000
    # 8 MB read for each of the first two (allowed alone by 2 * 10**7); 6 names x 8 MB for the hard links
    _refuse_nir_read(monkeypatch, 2 * 10**7 if kind == "hard-links" else 4_000_000)
    with pytest.raises(ValueError, match="bytes"):
        read_nir(path)


def test_nir_files_with_too_many_names_or_aliased_variable_length_items_are_refused(tmp_path, monkeypatch):
    """Hard-linked groups two to a level name their leaves 2**depth times (a walk that would take days);
    a variable-length dataset's items are references that may all name one large heap object."""
    import h5py

    def dag(f):
        groups = [f.create_group(f"x/g{i}") for i in range(25)]  # within the depth limit of 32
        for i, a in enumerate(groups[:-1]):
            b = groups[i + 1]
            a["a"], a["b"] = b, b

    path = _broken_nir(tmp_path, "dag.nir", dag)
    _refuse_nir_read(monkeypatch, 2**31)
    with pytest.raises(ValueError, match="more than 20000 names to walk"):
        read_nir(path)

    def variable_length(f):  # counted by the items' own sizes, not by their 16-byte references
        ds = f["node/nodes/input/metadata"].create_dataset("pad", shape=(64,), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(64):
            ds[i] = np.ones(100_000, np.uint8)

    path = _broken_nir(tmp_path, "vlen.nir", variable_length)
    monkeypatch.setattr("relpsp.export.nir.MAX_NIR_BYTES", 6_000_000)  # 64 items of 100 kB: 6.4 MB when read
    with pytest.raises(ValueError, match="more than 6000000 bytes"):
        read_nir(path)


def test_a_stride_of_zero_is_a_value_error(tmp_path):
    """NIR's own shape inference divides by the stride (OverflowError); the reader turns it into its error."""
    path = _broken_nir(tmp_path, "stride0.nir", _replace("node/nodes/pool1.sumpool/stride", np.array([0, 0])), CNN)
    with pytest.raises(ValueError, match="is not a valid NIR file"):
        read_nir(path)


def test_nir_files_pointing_into_other_files_are_refused(tmp_path, monkeypatch):
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["w"] = np.ones(4)
    path = _broken_nir(tmp_path, "ext.nir", lambda f: f.__setitem__("node/extra", h5py.ExternalLink(str(other), "w")))
    _refuse_nir_read(monkeypatch, 2**31)
    with pytest.raises(ValueError, match="links to another file"):
        read_nir(path)


def test_a_corrupt_compressed_chunk_is_a_value_error(tmp_path):
    """HDF5's own read failure (OSError) on a damaged chunk comes out as the reader's ``ValueError``."""
    import h5py

    def recompress(f):
        w = f["node/nodes/dense1.linear/weight"][()]
        del f["node/nodes/dense1.linear/weight"]
        f.create_dataset("node/nodes/dense1.linear/weight", data=w, compression="gzip", chunks=w.shape)

    path = _broken_nir(tmp_path, "corrupt.nir", recompress)
    with h5py.File(path, "r") as f:
        offset = f["node/nodes/dense1.linear/weight"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 20] = b"\xff" * 20
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is not a valid NIR file"):
        read_nir(path)


def test_reader_rejects_inconsistent_graphs():
    """Shapes that do not fit and edges to missing nodes are ``ValueError``s naming the node."""
    lif = dict(r=np.ones(1), v_threshold=np.ones(1))
    conv = nir.Conv2d(
        input_shape=None, weight=np.ones((1, 1, 3, 3)), stride=1, padding=0, dilation=1, groups=1, bias=np.zeros(1)
    )
    after_flat = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([16])}),
            "c": conv,
            "ci": nir.I(r=np.ones(1)),
            "cif": nir.IF(**lif),
            "output": nir.Output(output_type={"output": np.array([1])}),
        },
        edges=[("input", "c"), ("c", "ci"), ("ci", "cif"), ("cif", "output")],
    )
    with pytest.raises(ValueError, match=r"needs a \(C, H, W\) input"):
        network_from_nir(after_flat)
    after_flat.nodes["input"] = nir.Input(input_type={"input": np.array([1, 2, 2])})
    with pytest.raises(ValueError, match="does not fit its input"):
        network_from_nir(after_flat)
    after_flat.edges.append(("cif", "zz"))
    with pytest.raises(ValueError, match="'zz' it does not hold"):
        network_from_nir(after_flat)


def test_reader_refuses_what_a_single_chain_cannot_hold():
    """An Output with successors would cut the network short; a node off the chain would be ignored;
    complex weights would lose their imaginary part; array-valued metadata names its node and key."""
    lif = dict(r=np.ones(3), v_threshold=np.ones(3))

    def graph(extra_nodes=None, extra_edges=(), weight=None, meta=None):
        nodes = {
            "input": nir.Input(input_type={"input": np.array([4])}, metadata=meta or {}),
            "w": nir.Linear(weight=np.ones((3, 4)) if weight is None else weight),
            "wi": nir.I(r=np.ones(3)),
            "wif": nir.IF(**lif),
            "output": nir.Output(output_type={"output": np.array([3])}),
            **(extra_nodes or {}),
        }
        edges = [("input", "w"), ("w", "wi"), ("wi", "wif"), ("wif", "output"), *extra_edges]
        return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)

    assert len(network_from_nir(graph()).layers) == 1
    more = {"w2": nir.Linear(weight=np.ones((3, 3))), "w2i": nir.I(r=np.ones(3)), "w2if": nir.IF(**lif)}
    chain_on = [("output", "w2"), ("w2", "w2i"), ("w2i", "w2if")]
    with pytest.raises(ValueError, match="Output node 'output' has successors"):
        network_from_nir(graph(more, chain_on))
    with pytest.raises(ValueError, match=r"nodes \['w2', 'w2i', 'w2if'\] are not on the chain"):
        network_from_nir(graph(more, chain_on[1:]))
    with pytest.raises(ValueError, match="'w': weight must be real numbers, got dtype complex128"):
        network_from_nir(graph(weight=np.ones((3, 4)) * (1 + 1j)))
    with pytest.raises(
        ValueError, match=r"'input': metadata 'relpsp.t_in' must be one value, got an array of shape \(2,\)"
    ):
        network_from_nir(graph(meta={"relpsp.t_in": np.array([1.0, 2.0])}))


def test_reader_refuses_fractional_pool_sizes_and_misfit_neuron_parameters():
    """A pooling kernel of 2.5 is refused, not truncated to 2; an ``r`` that does not fit the layer's
    outputs is a ``ValueError`` naming the nodes, not numpy's broadcast error."""
    pool = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([1, 4, 4])}),
            "p": nir.SumPool2d(kernel_size=np.array([2.5, 2.5]), stride=np.array([2, 2]), padding=np.array([0, 0])),
            "pif": nir.IF(r=np.ones(1), v_threshold=np.full(1, 0.5)),
            "output": nir.Output(output_type={"output": np.array([1, 2, 2])}),
        },
        edges=[("input", "p"), ("p", "pif"), ("pif", "output")],
        type_check=False,
    )
    with pytest.raises(ValueError, match="'p': kernel_size must be integers"):
        network_from_nir(pool)
    with pytest.raises(ValueError, match="'wi'/'wif': r and v_threshold must fit"):
        network_from_nir(_dense_graph(wi=nir.I(r=np.ones(2))))


def test_simulate_options_apply_to_nir_networks(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, "20-12-5", (1, 4, 5), math.inf)
    export_nir(ckpt, tmp_path / "m.nir")
    net = read_nir(tmp_path / "m.nir")
    x = _images((1, 4, 5))
    res = simulate(net, x, SimOptions(weight_bits=6, time_bits=6, t_cutoff=3.0))
    assert res.grid is not None and res.grid.window == 3.0


# --- export.nir: weights "float32 when that keeps every value exactly ..., else float64"
def test_float64_weights_that_float32_cannot_hold_are_exported_exactly(tmp_path):
    pytest.importorskip("nir")
    from relpsp.export.nir import export_nir, read_nir
    from relpsp.sim import SimDense, SimNetwork

    w = np.array([[0.1, 0.2, 1 / 3], [0.7, -0.05, 0.3]], dtype=np.float64)  # not float32 values
    net = SimNetwork((SimDense(w),), (3,))
    export_nir(net, tmp_path / "n.nir")
    back = read_nir(tmp_path / "n.nir")
    assert back.layers[0].weight.dtype == np.float64
    assert np.array_equal(back.layers[0].weight, w)


# --- export.nir reader: SumPool2d -> IF "acts as min-time pooling only with 0 < v_threshold < r";
#     padding "same" only with stride 1
def _chain_graph(input_shape, nodes, n_flat):
    """input -> nodes -> Flatten -> Linear(2, n_flat) -> I -> IF -> output (a network must end dense)."""
    import nir

    tail = {
        "f": nir.Flatten(input_type={"input": np.array(input_shape)}, start_dim=0, end_dim=-1),
        "w": nir.Linear(weight=np.ones((2, n_flat))),
        "wi": nir.I(r=np.ones(2)),
        "wif": nir.IF(r=np.ones(2), v_threshold=np.ones(2)),
    }
    allnodes = {
        "input": nir.Input(input_type={"input": np.array(input_shape)}),
        **nodes,
        **tail,
        "output": nir.Output(output_type={"output": np.array([2])}),
    }
    names = list(allnodes)
    return nir.NIRGraph(nodes=allnodes, edges=list(itertools.pairwise(names)), type_check=False)


def _pool_graph(threshold):
    import nir

    nodes = {
        "p": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "pif": nir.IF(r=np.ones(1), v_threshold=np.full(1, threshold)),
    }
    return _chain_graph([1, 4, 4], nodes, 4)


def test_a_pool_if_whose_threshold_equals_r_is_refused():
    pytest.importorskip("nir")
    from relpsp.export.nir import network_from_nir

    network_from_nir(_pool_graph(0.999))
    with pytest.raises(ValueError, match="0 < v_threshold < r"):
        network_from_nir(_pool_graph(1.0))


def test_same_padding_with_a_stride_above_one_is_refused():
    nir = pytest.importorskip("nir")
    from relpsp.export.nir import network_from_nir

    def graph(stride):
        conv = nir.Conv2d(
            input_shape=None,
            weight=np.ones((1, 1, 3, 3)),
            stride=stride,
            padding="same",
            dilation=1,
            groups=1,
            bias=np.zeros(1),
        )
        nodes = {"c": conv, "ci": nir.I(r=np.ones(1)), "cif": nir.IF(r=np.ones(1), v_threshold=np.ones(1))}
        return _chain_graph([1, 6, 6], nodes, 36)

    assert network_from_nir(graph(1)).layers[0].padding == 1
    with pytest.raises(ValueError, match="padding 'same' is not supported"):
        network_from_nir(graph(2))


# --- export.nir.nir_data_config: relpsp.data must be "an object with keys among DATA_KEYS"
def test_relpsp_data_with_a_key_outside_data_keys_is_refused():
    pytest.importorskip("nir")
    import json

    from relpsp.export.nir import nir_data_config, to_nir
    from relpsp.sim import SimDense, SimNetwork

    graph = to_nir(SimNetwork((SimDense(np.ones((2, 3))),), (3,)), data={"dataset": "mnist", "augment": True})
    assert nir_data_config(graph) == {"dataset": "mnist"}  # the exporter keeps DATA_KEYS only
    graph.nodes["input"].metadata["relpsp.data"] = json.dumps({"dataset": "mnist", "augment": True})
    with pytest.raises(ValueError, match="keys among"):
        nir_data_config(graph)


def _conv_nodes(weight=None, r=None, **conv):
    """Conv2d -> I -> IF nodes for ``_chain_graph``: one 3x3 kernel of ones unless ``weight`` says otherwise;
    ``conv`` overrides the Conv2d's stride, padding, dilation, groups or bias."""
    settings = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": np.zeros(1), **conv}
    w = np.ones((1, 1, 3, 3)) if weight is None else weight
    return {
        "c": nir.Conv2d(input_shape=None, weight=w, **settings),
        "ci": nir.I(r=np.ones(1) if r is None else r),
        "cif": nir.IF(r=np.ones(1), v_threshold=np.ones(1)),
    }


def _dense_graph(**nodes_over):
    """input [4] -> Linear -> I -> IF -> output, with any node replaced by ``nodes_over``."""
    nodes = {
        "input": nir.Input(input_type={"input": np.array([4])}),
        "w": nir.Linear(weight=np.ones((3, 4))),
        "wi": nir.I(r=np.ones(3)),
        "wif": nir.IF(r=np.ones(3), v_threshold=np.ones(3)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }
    nodes.update(nodes_over)
    return nir.NIRGraph(nodes=nodes, edges=list(itertools.pairwise(nodes)), type_check=False)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: _chain_graph([1, 6, 6], _conv_nodes(weight=np.ones((1, 3, 3))), 16), "Conv2d weight must be 4-D"),
        (lambda: _chain_graph([1, 6, 6], _conv_nodes(dilation=2), 16), "dilation and groups must be 1"),
        (lambda: _chain_graph([1, 6, 6], _conv_nodes(groups=2), 16), "dilation and groups must be 1"),
        (lambda: _chain_graph([1, 6, 6], _conv_nodes(bias=np.ones(1)), 16), "Conv2d with a non-zero bias"),
        (lambda: _chain_graph([1, 6, 6], _conv_nodes(weight=np.ones((1, 1, 3, 2))), 20), "needs a square kernel"),
        (
            lambda: _chain_graph([1, 6, 6], _conv_nodes(r=np.arange(1.0, 17.0).reshape(1, 4, 4)), 16),
            "per-position r or v_threshold cannot be shared-weight",
        ),
        (
            lambda: _chain_graph(
                [1, 4, 4],
                {
                    "p": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([1, 1])),
                    "pif": nir.IF(r=np.ones(1), v_threshold=np.full(1, 0.5)),
                },
                9,
            ),
            "pooling with padding is not supported",
        ),
        (
            lambda: _chain_graph(
                [1, 4, 4],
                {
                    "p": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
                    "pi": nir.I(r=np.ones(1)),
                },
                4,
            ),
            "SumPool2d must be followed by an IF node",
        ),
        (lambda: _dense_graph(w=nir.Linear(weight=np.ones((3, 4, 1)))), "weight must be 2-D"),
        (lambda: _dense_graph(wif=nir.I(r=np.ones(3))), "'wif' must be an IF node after the integrator 'wi'"),
        (
            lambda: _dense_graph(wif=nir.IF(r=np.ones(3), v_threshold=np.zeros(3))),
            "'wif': v_threshold must be finite and positive",
        ),
        (lambda: _dense_graph(wi=nir.I(r=-np.ones(3))), "'wi'/'wif': r must be finite and positive"),
        (
            lambda: _dense_graph(input=nir.Linear(weight=np.ones((4, 4)))),
            r"exactly one Input node, found 0",
        ),
    ],
)
def test_reader_names_the_node_it_cannot_take(make, match):
    """A graph another tool wrote with something the ReL-PSP simulator cannot run: a ValueError naming the
    node and the reason, never a numpy error or a silently different network."""
    with pytest.raises(ValueError, match=match):
        network_from_nir(make())


def test_reader_follows_a_cycle_no_further_and_takes_valid_padding_and_a_uniform_gain():
    """A cycle is refused by name; "valid" padding is 0; a uniform r on a convolution scales its weights."""
    g = _dense_graph()
    g.edges[-1] = ("wif", "w")  # input -> w -> wi -> wif -> w again: round and round, never the Output
    with pytest.raises(ValueError, match="the NIR graph has a cycle through 'w'"):
        network_from_nir(g)
    net = network_from_nir(_chain_graph([1, 6, 6], _conv_nodes(padding="valid", r=np.full(1, 2.0)), 16))
    conv = net.layers[0]
    assert conv.padding == 0 and np.array_equal(conv.weight, np.full((1, 1, 3, 3), 2.0))
