"""Training EfficientHRNet: optimiser, train state, the pmap step, checkpoints, logging, loop.

- `optim`: the learning-rate schedule and the (optionally backbone-freezing) Adam optimiser.
- `state`: `TrainState`, the one pytree that is stepped, replicated and checkpointed.
- `step`: the pure step function `(state, batch, rng) -> (state, metrics)` and its pmap.
- `input`: what the loop needs from the input pipeline, and the COCO implementation.
- `checkpointing`: orbax `CheckpointManager` (async, latest N + best by AP, auto-resume).
- `evaluation`: the COCO AP hook.
- `writers`: JSON lines, TensorBoard and the console progress bar.
- `distributed`: multi-process start-up through `jax.distributed.initialize()`.
- `loop`: `train(config, workdir)`, the whole job (`ehrnet train`).
"""
