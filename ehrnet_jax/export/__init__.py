"""Export of a trained network for deployment: ONNX, TF SavedModel and TensorRT engines.

- `network`: the eval-mode network as a pure function of the images, its input layout and size,
  and the metadata every exported model carries;
- `onnx`: jax2onnx -> constant folding (batch norm already folded into the convolutions) ->
  `lean` graph passes (no layout transposes, Resize, GlobalAveragePool, biases inside the
  convolutions) -> checked standard-op graph with metadata;
- `lean`: those passes, on plain ONNX graphs;
- `savedmodel`: jax2tf (native serialization) with a `serving_default` signature;
- `tensorrt`: an FP32/FP16 engine from the ONNX file (needs an NVIDIA GPU and TensorRT).

Running an exported ONNX model needs no JAX: see `ehrnet_jax.inference.onnx_decoder`.
"""
