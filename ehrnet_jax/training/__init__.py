"""Training the pose model and the backbone classifier: one loop, one step, a task for each.

- `optim`: the learning-rate schedule and the (optionally backbone-freezing) Adam or SGD.
- `state`: `TrainState`, the one pytree that is stepped, replicated and checkpointed.
- `step`: the pure per-device step `(state, batch, rng) -> (state, metrics)` and the SPMD program
  (`jit` of `shard_map`) that runs it on every device.
- `mesh`: the data-parallel device mesh and the global arrays on it (replicated state, batches).
- `input`: what the loop needs from the input pipeline; the COCO and TFDS-classification ones.
- `tasks`: what differs between pose (COCO) and classification (imagenet2012, cifar100):
  model, batch preparation, loss, default data and evaluation, ranking metric, final save.
- `checkpointing`: orbax `CheckpointManager` (async, latest N + best by AP / top-1, auto-resume).
- `evaluation`: the COCO AP and the top-1/top-5 hooks.
- `writers`: JSON lines, TensorBoard and the console progress bar.
- `event_file`: TensorBoard event files, written without TensorFlow.
- `distributed`: multi-process start-up through `jax.distributed.initialize()`, and XLA's
  deterministic-ops flag.
- `loop`: `train(config, workdir)`, the whole job (`ehrnet train`).
"""
