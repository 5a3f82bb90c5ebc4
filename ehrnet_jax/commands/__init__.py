"""Sub-commands of the `ehrnet` CLI, one module each.

Every module defines `register(subparsers)`, which adds its parser and sets `run=` to a function
taking the parsed arguments and returning an exit code. Modules import only the standard library at
the top level: heavy imports (JAX, TensorFlow, onnxruntime) happen inside `run`, so `ehrnet --help`
is instant and the ONNX path never imports JAX.
"""
