"""Write a small VGG-like classifier in the ONNX pattern Keras/TF exports use (tf2onnx):
NHWC input, Transpose to NCHW, conv body (one asymmetric "same" pad, as TF pads
stride-2 convs), Transpose back, a dynamic Reshape (Shape/Gather/Unsqueeze/Concat),
MatMul + Add dense layers, batch-norm as Mul + Add, and a final Softmax.

    python examples/keras_style_vgg.py keras_vgg.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE, CLASSES = 32, 5


def build(seed: int = 0, free_size: bool = False) -> onnx.ModelProto:
    """The model; ``free_size`` leaves the input height/width symbolic (as many exports do)."""
    rng = np.random.default_rng(seed)
    inits = []

    def const(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, dtype=np.float32 if np.asarray(a).dtype.kind == "f"
                                                        else np.int64), name))
        return name

    def rand(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2])]
    # stride-2 conv with TF "same" padding on an even size: 0 before, 1 after
    nodes.append(helper.make_node("Conv", ["nchw", const("w1", rand(8, 3, 3, 3, scale=0.3)),
                                          const("b1", rand(8))],
                                  ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    nodes.append(helper.make_node("Conv", ["r1", const("w2", rand(16, 8, 3, 3, scale=0.2)),
                                          const("b2", rand(16))],
                                  ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("BatchNormalization", ["c2", const("g", rand(16) * 0.1 + 1),
                                                        const("be", rand(16)),
                                  const("mu", rand(16) * 0.1), const("var", np.abs(rand(16)) + 0.5)], ["bn"]))
    nodes.append(helper.make_node("Relu", ["bn"], ["r2"]))
    nodes.append(helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Transpose", ["p2"], ["nhwc"], perm=[0, 2, 3, 1]))
    # Flatten as Keras exports it: Reshape to [batch, -1] with the batch read from Shape
    nodes += [
        helper.make_node("Shape", ["nhwc"], ["shape"]),
        helper.make_node("Gather", ["shape", const("zero", np.array(0))], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", const("axes", np.array([0]))], ["batch1"]),
        helper.make_node("Concat", ["batch1", const("minus1", np.array([-1]))], ["newshape"], axis=0),
        helper.make_node("Reshape", ["nhwc", "newshape"], ["flat"]),
    ]
    n = 16 * 8 * 8
    nodes += [
        helper.make_node("MatMul", ["flat", const("d1", rand(n, 32, scale=n ** -0.5))], ["m1"]),
        helper.make_node("Add", ["m1", const("db1", rand(32))], ["a1"]),
        # BatchNormalization on a Dense output, as tf2onnx folds it: Mul + Add
        helper.make_node("Mul", ["a1", const("bn_scale", rand(32) * 0.2 + 1)], ["s1"]),
        helper.make_node("Add", ["s1", const("bn_shift", rand(32) * 0.1)], ["t1"]),
        helper.make_node("Relu", ["t1"], ["h1"]),
        helper.make_node("MatMul", ["h1", const("d2", rand(32, CLASSES, scale=0.3))], ["m2"]),
        helper.make_node("Add", ["m2", const("db2", rand(CLASSES))], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "keras_style_vgg",
        [helper.make_tensor_value_info(
            "image", TensorProto.FLOAT, ["N", *(("H", "W") if free_size else (SIZE, SIZE)), 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(build(), sys.argv[1] if len(sys.argv) > 1 else "keras_vgg.onnx")
