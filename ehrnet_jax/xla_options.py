"""XLA compiler options for the network's inference programs (`jax.jit(compiler_options=...)`).

On CPU, XLA hands convolutions to YNNPACK by default. At inference batch sizes (1-8) YNNPACK ran
every convolution of these networks on one thread of the two, while XLA's own (Eigen)
convolutions use them all: with YNNPACK's convolutions turned off the eval network is 1.2-1.3x
faster (2-core AMD EPYC, JAX 0.10.2: H0 449 -> 361 ms, H-1 316 -> 261 ms, H-4 73 -> 55 ms at
batch 1; H0 474 -> 363 ms/image at batch 2). Training steps are the other way round (H0 frozen
backbone 2.7 s with YNNPACK, 3.8 s without), so the option is applied to inference programs only.

XLA's own loops (batch norm, activations, sums, padding) are also vectorised for 512-bit
registers rather than LLVM's default preference of 256 bits on AVX-512 processors (H0 at batch 1:
-3%; on processors without AVX-512 the option changes nothing).
"""

import jax

_CPU_INFERENCE = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_prefer_vector_width": 512}


def inference_compiler_options(backend: str | None = None) -> dict[str, str | int] | None:
  """Options for jitting the network in eval mode on `backend` (default: JAX's default)."""
  return dict(_CPU_INFERENCE) if (backend or jax.default_backend()) == "cpu" else None
