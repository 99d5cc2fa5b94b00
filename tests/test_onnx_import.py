"""ONNX -> IR: every supported op, built with onnx.helper, compared with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import fxverify
from fxverify import onnx_import
from fxverify.errors import AgreementError, ModelError
from fxverify.reference import OnnxReference

from builders import make, ort_run, rand, save

N = "N"


def _fc_head(prev, d, out="y", k=3, name="head"):
    """Flatten -> Gemm(transB) so every case ends in a small logits vector."""
    return ([helper.make_node("Flatten", [prev], [f"{name}_f"], axis=1),
             helper.make_node("Gemm", [f"{name}_f", f"{name}_W", f"{name}_b"], [out], transB=1)],
            {f"{name}_W": rand(k, d), f"{name}_b": rand(k)})


def case_conv_pad_stride():
    W, b = rand(4, 1, 3, 3), rand(4)
    head, hi = _fc_head("r", 4 * 5 * 5)
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"])] + head
    return make(nodes, [N, 1, 9, 9], inits={"W": W, "b": b, **hi}), ["linear1", "relu1", "linear2"]


def case_conv_dilation_asym_pads():
    head, hi = _fc_head("c", 3 * 7 * 4)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], dilations=[2, 2], pads=[0, 1, 2, 0], kernel_shape=[3, 3])] \
        + head
    return make(nodes, [N, 2, 9, 7], inits={"W": rand(3, 2, 3, 3), **hi}), ["linear1", "linear2"]


def case_conv_groups():
    head, hi = _fc_head("c", 6 * 4 * 4)
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"], group=2)] + head
    return make(nodes, [N, 4, 5, 5], inits={"W": rand(6, 2, 2, 2), "b": rand(6), **hi}), None


def case_conv_depthwise_same_upper():
    head, hi = _fc_head("c", 3 * 4 * 4)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], group=3, auto_pad="SAME_UPPER", strides=[2, 2])] + head
    return make(nodes, [N, 3, 7, 8], inits={"W": rand(3, 1, 4, 3), **hi}), None


def case_conv_same_lower():
    head, hi = _fc_head("c", 2 * 6 * 6)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], auto_pad="SAME_LOWER")] + head
    return make(nodes, [N, 1, 6, 6], inits={"W": rand(2, 1, 4, 4), **hi}), None


def case_conv_valid_1d():
    head, hi = _fc_head("c", 2 * 4)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], auto_pad="VALID", strides=[2])] + head
    return make(nodes, [N, 3, 10], inits={"W": rand(2, 3, 3), **hi}), None


def _bn(name, C):
    return {f"{name}_s": rand(C) + 1.0, f"{name}_b": rand(C), f"{name}_m": rand(C),
            f"{name}_v": (np.abs(rand(C)) + 0.1).astype(np.float32)}


def _bn_node(x, y, name):
    return helper.make_node("BatchNormalization", [x, f"{name}_s", f"{name}_b", f"{name}_m", f"{name}_v"], [y],
                            epsilon=1e-3)


def case_bn_after_conv():
    head, hi = _fc_head("r", 3 * 4 * 4)
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"]), _bn_node("c", "n", "bn"),
             helper.make_node("Relu", ["n"], ["r"])] + head
    return make(nodes, [N, 2, 6, 6], inits={"W": rand(3, 2, 3, 3), "b": rand(3), **_bn("bn", 3), **hi}), \
        ["linear1", "relu1", "linear2"]


def case_bn_before_conv():
    head, hi = _fc_head("c2", 2 * 2 * 2)
    nodes = [_bn_node("x", "n", "bn0"), helper.make_node("Conv", ["n", "W"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]), _bn_node("r", "n2", "bn1"),
             helper.make_node("Conv", ["n2", "W2"], ["c2"])] + head
    inits = {"W": rand(3, 2, 3, 3), "W2": rand(2, 3, 3, 3), **_bn("bn0", 2), **_bn("bn1", 3), **hi}
    return make(nodes, [N, 2, 6, 6], inits=inits), ["linear1", "relu1", "linear2", "linear3"]


def case_gemm_transB_alpha_beta():
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)]
    return make(nodes, [N, 2, 3, 3], inits={"W": rand(4, 18), "b": rand(4)}), ["linear1"]


def case_gemm_transA_column_input():
    # A fixed-shape column input (6, 1): Gemm(transA=1) makes it a row.
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transA=1)]
    return make(nodes, [6, 1], inits={"W": rand(6, 3), "b": rand(1, 3)}), None


def case_gemm_data_as_B():
    nodes = [helper.make_node("Gemm", ["W", "x", "b"], ["y"], transB=1, beta=0.3)]
    return make(nodes, [1, 6], inits={"W": rand(3, 6), "b": rand(3, 1)}), None


def case_matmul_add():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    return make(nodes, [N, 6], inits={"W": rand(6, 5), "b": rand(5), "W2": rand(5, 2)}), \
        ["linear1", "relu1", "linear2"]


def case_matmul_const_left_and_3d():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),  # (N, 3, 6) @ (6, 4)
             helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("MatMul", ["A", "r"], ["y"])]  # (2, 3) @ (N, 3, 4)
    return make(nodes, [N, 3, 6], inits={"W": rand(6, 4), "A": rand(2, 3)}), None


def case_normalisation_scalars_and_channels():
    head, hi = _fc_head("d", 2 * 4 * 4)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["d0"]),
             helper.make_node("Mul", ["d0", "chan"], ["d1"]), helper.make_node("Sub", ["one", "d1"], ["d"])] + head
    inits = {"mean": np.array(0.1307, dtype=np.float32), "std": np.array(0.3081, dtype=np.float32),
             "chan": rand(1, 2, 1, 1), "one": np.array(1.0, dtype=np.float32), **hi}
    return make(nodes, [N, 2, 4, 4], inits=inits), ["linear1"]


def case_reshape_zero_minus_one_identity_dropout():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["rs"]), helper.make_node("Identity", ["rs"], ["i"]),
             helper.make_node("Dropout", ["i"], ["dr"]), helper.make_node("MatMul", ["dr", "W"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    return make(nodes, [N, 2, 3, 4], inits={"shape": np.array([0, -1], dtype=np.int64), "W": rand(24, 3)}), \
        ["linear1", "relu1"]


def case_nhwc_transposes():
    head, hi = _fc_head("t2", 3 * 3 * 3)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "W", "b"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t2"], perm=[0, 2, 3, 1])] + head
    return make(nodes, [N, 5, 5, 2], inits={"W": rand(3, 2, 3, 3), "b": rand(3), **hi}), \
        ["linear1", "relu1", "linear2"]


def case_maxpool_non_tiling_padded_ceil_dilated():
    head, hi = _fc_head("p3", 2 * 2 * 2)
    nodes = [helper.make_node("MaxPool", ["x"], ["p1"], kernel_shape=[3, 3], strides=[3, 3]),  # 8 -> 2 (floor)
             helper.make_node("Relu", ["p1"], ["r"]),
             helper.make_node("Identity", ["r"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p3"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], strides=[2, 2],
                              ceil_mode=1)] + head
    return make(nodes, [N, 2, 8, 8], inits=hi, opset=13), ["pool1", "relu1", "pool2", "linear1"]


def case_maxpool_dilations_pads():
    head, hi = _fc_head("p", 2 * 4 * 4)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 0],
                              strides=[2, 2])] + head
    return make(nodes, [N, 2, 7, 8], inits=hi), None


def case_maxpool_same_upper():
    head, hi = _fc_head("p", 2 * 4 * 3)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 2], auto_pad="SAME_UPPER", strides=[2, 2])] \
        + head
    return make(nodes, [N, 2, 7, 6], inits=hi), None


def case_averagepool_variants():
    head, hi = _fc_head("g", 2)
    nodes = [helper.make_node("AveragePool", ["x"], ["a1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["a1"], ["a2"], kernel_shape=[2, 2], pads=[1, 0, 1, 0],
                              count_include_pad=1, ceil_mode=1),
             helper.make_node("Relu", ["a2"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"])] + head
    return make(nodes, [N, 2, 9, 9], inits=hi), ["pool1", "pool2", "relu1", "pool3", "linear1"]


def case_squeeze_unsqueeze_opset11():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[1]), helper.make_node("Squeeze", ["u"], ["s"], axes=[1]),
             helper.make_node("MatMul", ["s", "W"], ["y"])]
    return make(nodes, [N, 5], inits={"W": rand(5, 2)}, opset=11), None


def case_pytorch_flatten_chain_opset9():
    # The x.view(x.size(0), -1) export: Shape -> Gather -> Unsqueeze, Constant -1 -> Unsqueeze, Concat -> Reshape.
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.INT64, [], [0])),
             helper.make_node("Shape", ["r"], ["sh"]), helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
             helper.make_node("Constant", [], ["m1"], value=helper.make_tensor("m", TensorProto.INT64, [], [-1])),
             helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
             helper.make_node("Unsqueeze", ["m1"], ["m2"], axes=[0]),
             helper.make_node("Concat", ["n1", "m2"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W2", "b2"], ["y"], transB=1)]
    return make(nodes, [1, 2, 5, 5], inits={"W": rand(3, 2, 2, 2), "W2": rand(4, 48), "b2": rand(4)}, opset=9), \
        ["linear1", "relu1", "linear2"]


def case_output_relu_constant_nodes():
    nodes = [helper.make_node("Constant", [], ["mu"], value=helper.make_tensor("mu", TensorProto.FLOAT, [1, 1, 1, 1],
                                                                              [0.5])),
             helper.make_node("Sub", ["x", "mu"], ["s"]), helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["y"])]
    return make(nodes, [1, 1, 4, 4], inits={"W": rand(3, 16), "b": rand(3)}), ["linear1", "relu1"]


def case_paper_cnn():
    """conv-BN-ReLU-maxpool-conv-BN-ReLU-maxpool-FC-FC on 1x28x28 (20 and 50 channels, 500 hidden)."""
    nodes = [helper.make_node("Conv", ["x", "c1W", "c1b"], ["c1"]), _bn_node("c1", "n1", "bn1"),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "c2W", "c2b"], ["c2"]), _bn_node("c2", "n2", "bn2"),
             helper.make_node("Relu", ["n2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p2"], ["f"]),
             helper.make_node("Gemm", ["f", "f1W", "f1b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "f2W", "f2b"], ["y"], transB=1)]
    inits = {"c1W": rand(20, 1, 5, 5), "c1b": rand(20), **_bn("bn1", 20), "c2W": rand(50, 20, 5, 5, scale=0.05),
             "c2b": rand(50), **_bn("bn2", 50), "f1W": rand(500, 800, scale=0.05), "f1b": rand(500),
             "f2W": rand(2, 500, scale=0.05), "f2b": rand(2)}
    return make(nodes, [N, 1, 28, 28], inits=inits), \
        ["linear1", "relu1", "pool1", "linear2", "relu2", "pool2", "linear3", "relu3", "linear4"]


def case_initializers_listed_as_inputs_ir3():
    m, _ = case_matmul_add()
    for t in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    m.ir_version = 3
    return m, ["linear1", "relu1", "linear2"]


def _close(ours, ref, msg=""):
    """float64 IR vs float32 onnxruntime: relative to the magnitude of the values compared."""
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())), err_msg=msg)


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(tmp_path, name):
    model, cuts = CASES[name]()
    path = save(tmp_path, model)
    net = fxverify.load_model(path)
    if cuts is not None:
        assert net.cuts == ("input", *cuts)
    rng = np.random.default_rng(1)
    shape = net.input_tensor_shape
    X = rng.uniform(0, 1, (5,) + net.input_shape)
    expected = np.concatenate([ort_run(path, x.reshape(shape)).reshape(1, -1) for x in X])
    _close(net.forward(X), expected)
    ag = net.agreement
    assert all(ag.max_abs_diff[c] <= 1e-5 * max(1.0, ag.scale[c]) for c in net.cuts), ag
    # every intermediate cut agrees too
    ref = OnnxReference(net.source, [net.onnx_tensor(c) for c in net.cuts]).run(X.reshape(5, -1))
    for c in net.cuts:
        _close(net.forward(X, cut=c), ref[net.onnx_tensor(c)], f"cut {c}")


def test_paper_cnn_layer_shapes(tmp_path):
    net = fxverify.load_model(save(tmp_path, case_paper_cnn()[0]))
    shapes = {c: net.cut_shape(c) for c in net.cuts}
    assert shapes["linear1"] == (1, 20, 24, 24) and shapes["pool1"] == (1, 20, 12, 12)
    assert shapes["linear2"] == (1, 50, 8, 8) and shapes["pool2"] == (1, 50, 4, 4)
    assert shapes["linear3"] == (1, 500) and shapes["linear4"] == (1, 2)
    first = net.nodes[0]
    assert first.kind == "linear" and first.weight.shape == (20 * 24 * 24, 784)
    assert [n.kind for n in net.nodes[:3]] == ["linear", "relu", "maxpool"]
    # the convolution is a sparse operator (its kernel entries), never a dense Toeplitz matrix
    import scipy.sparse as sp

    assert sp.issparse(first.weight) and first.weight.nnz == 20 * 24 * 24 * 25
    # BN folded into the conv: one linear layer holding both nodes
    assert [o.split()[0] for o in first.ops] == ["Conv", "BatchNormalization"]
    assert first.n_params == 20 * 25 + 20 + 4 * 20


def test_forward_accepts_single_batch_flat_and_shaped(tmp_path):
    net = fxverify.load_model(save(tmp_path, case_bn_after_conv()[0]))
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (3, 2, 6, 6))
    full = net.forward(X)
    assert full.shape == (3, 3)
    np.testing.assert_allclose(net.forward(X.reshape(3, -1)), full)
    np.testing.assert_allclose(net.forward(X[1]), full[1])
    np.testing.assert_allclose(net.forward(X[1].ravel()), full[1])
    assert net.forward(X, cut="relu1").shape == (3, 3 * 4 * 4)
    with pytest.raises(fxverify.FxverifyError, match="does not fit the model"):
        net.forward(np.zeros((3, 5)))
    with pytest.raises(fxverify.FxverifyError, match="unknown cut 'relu9'"):
        net.forward(X, cut="relu9")


def test_layers_are_immutable(tmp_path):
    net = fxverify.load_model(save(tmp_path, case_matmul_add()[0]))
    with pytest.raises(ValueError):
        net.nodes[0].weight[0, 0] = 1.0


# ---------------------------------------------------------------- bad models ------------
def test_unsupported_ops_leave_the_cuts_before_them(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Sigmoid", ["m"], ["s"], name="sig"),
             helper.make_node("MatMul", ["s", "W2"], ["m2"]), helper.make_node("Relu", ["m2"], ["r"]),
             helper.make_node("Tanh", ["r"], ["y"], name="th")]
    p = save(tmp_path, make(nodes, [N, 4], inits={"W": rand(4, 4), "W2": rand(4, 4)}))
    net = fxverify.load_model(p)
    assert net.cuts == ("input", "linear1")  # the MatMul before the Sigmoid is a cut
    assert [u.cut for u in net.unavailable] == ["linear2", "relu1"]
    assert all("Sigmoid 'sig' (node 1, output 's')" in u.reason for u in net.unavailable)
    with pytest.raises(fxverify.FxverifyError, match=r"cut 'relu1' is unavailable: .*Sigmoid 'sig'"):
        net.cut_index("relu1")
    with pytest.raises(fxverify.FxverifyError, match=r"unknown cut 'relu7'.*unavailable: linear2, relu1"):
        net.cut_index("relu7")


def test_residual_add_is_a_cut(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["m2"]), helper.make_node("Add", ["m2", "r"], ["s"], name="res"),
             helper.make_node("Relu", ["s"], ["y"])]
    p = save(tmp_path, make(nodes, [N, 4], inits={"W": rand(4, 4), "W2": rand(4, 4)}))
    net = fxverify.load_model(p)
    assert net.cuts == ("input", "linear1", "relu1", "linear2", "add1", "relu2")
    add = net.node("add1")
    assert add.inputs == ("linear2", "relu1") and [o.split()[0] for o in add.ops] == ["Add"]
    # a collision at relu1 determines add1 (every path passes through it), linear2 does not
    assert net.dominators("add1") == ("input", "linear1", "relu1", "add1")
    X = np.random.default_rng(0).standard_normal((5, 4))
    _close(net.forward(X), ort_run(p, X), "residual output")


def test_concat_and_sub_of_activations(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("MatMul", ["x", "W2"], ["m2"]), helper.make_node("Relu", ["m2"], ["r2"]),
             helper.make_node("Concat", ["r", "r2", "c"], ["cat"], axis=1),
             helper.make_node("Sub", ["r", "r2"], ["d"]), helper.make_node("Concat", ["cat", "d"], ["y"], axis=1)]
    p = save(tmp_path, make(nodes, [1, 4], inits={"W": rand(4, 3), "W2": rand(4, 3), "c": rand(1, 2)}))
    net = fxverify.load_model(p)
    assert {"concat1", "add1", "concat2"} <= set(net.cuts)
    for x in np.random.default_rng(1).standard_normal((3, 1, 4)):
        _close(net.forward(x)[0], ort_run(p, x)[0], "concat output")


def test_leaky_relu_is_a_piece(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("LeakyRelu", ["m"], ["y"], alpha=0.1)]
    p = save(tmp_path, make(nodes, [N, 4], inits={"W": rand(4, 3)}))
    net = fxverify.load_model(p)
    assert net.cuts == ("input", "linear1", "relu1") and net.node("relu1").alpha == pytest.approx(0.1)
    X = np.random.default_rng(2).standard_normal((5, 4))
    _close(net.forward(X), ort_run(p, X), "leaky relu")


def test_a_shared_tensor_is_one_node(tmp_path):
    # one activation feeding two nodes: both read the same node
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["a"]),
             helper.make_node("MatMul", ["r", "W"], ["b"]), helper.make_node("Add", ["a", "b"], ["y"])]
    p = save(tmp_path, make(nodes, [N, 4], inits={"W": rand(4, 4)}))
    net = fxverify.load_model(p)
    assert net.cuts == ("input", "relu1", "linear1", "linear2", "add1")
    assert net.node("linear1").inputs == net.node("linear2").inputs == ("relu1",)


def test_division_by_activation_is_unavailable(tmp_path):
    nodes = [helper.make_node("Div", ["one", "x"], ["d"]), helper.make_node("Relu", ["d"], ["y"])]
    p = save(tmp_path, make(nodes, [N, 4], inits={"one": np.ones(4, np.float32)}))
    net = fxverify.load_model(p)
    assert net.cuts == ("input",) and "divides by an activation" in net.unavailable[0].reason


def test_too_large_operator_refused_before_allocation(tmp_path, monkeypatch):
    from fxverify import linops

    W = rand(64, 3, 3, 3)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])]
    p = save(tmp_path, make(nodes, [1, 3, 224, 224], inits={"W": W}))
    monkeypatch.setattr(linops, "MAX_OPERATOR_BYTES", 64 << 20)  # 64 MiB instead of the machine's
    with pytest.raises(ModelError, match=r"convolution would need a sparse matrix with 86,704,128 non-zeros"):
        fxverify.load_model(p)


def test_several_inputs(tmp_path):
    extra = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])]
    nodes = [helper.make_node("Add", ["x", "z"], ["y"])]
    p = save(tmp_path, make(nodes, [1, 4], extra_inputs=extra))
    with pytest.raises(ModelError, match=r"exactly one input, this one has 2 \('x', 'z'\)"):
        fxverify.load_model(p)


def test_non_float_input(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT), helper.make_node("Relu", ["c"], ["y"])]
    p = save(tmp_path, make(nodes, [1, 4], elem=TensorProto.INT64))
    with pytest.raises(ModelError, match="element type INT64; fxverify needs a float input"):
        fxverify.load_model(p)


def test_unresolvable_dynamic_shape(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    p = save(tmp_path, make(nodes, [N, 1, "H", 28]))
    with pytest.raises(ModelError, match=r"dynamic dimension 2 \('H'\) that cannot be resolved"):
        fxverify.load_model(p)


def test_dilated_same_pool_is_unavailable(tmp_path):
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], auto_pad="SAME_UPPER")]
    p = save(tmp_path, make(nodes, [N, 1, 7, 7]))
    net = fxverify.load_model(p)
    assert net.cuts == ("input",) and [u.cut for u in net.unavailable] == ["pool1"]
    assert "combines dilations" in net.unavailable[0].reason


def test_nan_weights(tmp_path):
    W = rand(4, 3)
    W[1, 2] = np.nan
    p = save(tmp_path, make([helper.make_node("MatMul", ["x", "W"], ["y"])], [N, 4], inits={"W": W}))
    with pytest.raises(ModelError, match="NaN"):
        fxverify.load_model(p)


def test_garbage_empty_truncated_missing(tmp_path, shipped_model):
    g = tmp_path / "garbage.onnx"
    g.write_bytes(b"\x93this is not a protobuf at all" * 10)
    e = tmp_path / "empty.onnx"
    e.write_bytes(b"")
    t = tmp_path / "truncated.onnx"
    t.write_bytes(shipped_model.read_bytes()[: shipped_model.stat().st_size // 2])
    for p, msg in [(g, "not a valid ONNX"), (e, "is empty"), (t, "not a valid ONNX"),
                   (tmp_path / "missing.onnx", "model file not found"), (tmp_path, "is a directory")]:
        with pytest.raises(ModelError, match=msg):
            fxverify.load_model(p)


def test_disagreement_with_onnxruntime_fails_the_load(tmp_path, monkeypatch):
    """A wrong conversion (here: Transpose treated as a no-op) must be caught by the check."""
    model, _ = case_nhwc_transposes()
    p = save(tmp_path, model)

    def broken_transpose(node, shape, consts):
        perm = list(onnx_import._attrs(node)["perm"])
        return tuple(shape[i] for i in perm), None

    monkeypatch.setattr(onnx_import, "_transpose", broken_transpose)
    with pytest.raises(AgreementError, match="disagrees with onnxruntime at cut"):
        fxverify.load_model(p)


def test_a_fifo_or_device_is_refused_before_reading_and_empty_dims_are_named(tmp_path):
    """Fault sweep: reading a FIFO as a model blocked forever; an input dimension of size 0 was
    reported as "dynamic"."""
    import os

    os.mkfifo(tmp_path / "fifo.onnx")
    for path in (tmp_path / "fifo.onnx", "/dev/null"):
        with pytest.raises(ModelError, match="not a regular file"):
            fxverify.load_model(path)
    zero = save(tmp_path, make([helper.make_node("Relu", ["x"], ["y"])], ["N", 0], out_shape=["N", 0]), "zero.onnx")
    with pytest.raises(ModelError, match="dimension 1 of size 0"):
        fxverify.load_model(zero)
