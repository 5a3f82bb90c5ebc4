"""Training EfficientHRNet: optimiser, train state, the pmap step, checkpoints, logging, loop.

- `optim`: the learning-rate schedule and the (optionally backbone-freezing) Adam optimiser.
- `state`: `TrainState`, the one pytree that is stepped, replicated and checkpointed.
- `step`: the pure step function `(state, batch, rng) -> (state, metrics)` and its pmap.
- `checkpointing`: orbax `CheckpointManager` (async, latest N + best by AP, auto-resume).
- `writers`: JSON lines, TensorBoard and the console progress bar.
- `distributed`: multi-process start-up through `jax.distributed.initialize()`.
- `loop`: `train(config, workdir)`, the whole job.
"""
