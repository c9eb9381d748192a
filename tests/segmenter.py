"""A tiny "not white" segmentation model in U²-Net's ONNX layout, so rembg's custom session runs offline."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 320  # rembg's u2net_custom session resizes every photo to 320×320
# rembg feeds (pixel / brightest pixel - ImageNet mean) / ImageNet std per channel. The mean of those
# three values is about 2.44 for white, 1.48 for a light grey (200) and -1.99 for black: the edge sits
# between light grey and white, steep enough that a white background scores ~0 and a product ~1.
EDGE, STEEPNESS = 1.9, 8.0


def build_tiny_segmenter(path: Path) -> Path:
    """Write the model to `path`: a 1×1 convolution (minus the channel mean) and a sigmoid; return the path."""
    weight = np.full((1, 3, 1, 1), -STEEPNESS / 3, dtype=np.float32)
    bias = np.array([STEEPNESS * EDGE], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input.1", "weight", "bias"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["d0"])],
        "tiny_segmenter",
        # U²-Net's names; rembg reads the input's name from the model and takes the first output's channel 0.
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, SIZE, SIZE])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime releases from 1.14 on all read
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
