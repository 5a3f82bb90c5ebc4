"""Kernels: the network's primitives in the forms XLA runs fastest, with hand-written gradients.

Each module holds one alternative lowering of a primitive the model uses, with the reason and
the measurement that justify it; each computes the same numbers as the plain primitive (up to
float rounding) and is tested against autodiff of that primitive. Nothing here is a module or
reads the backend: `ehrnet_jax.models.execution.ExecutionForm` chooses among them.
"""
