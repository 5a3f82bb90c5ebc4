"""`ehrnet demo`: the main job on the bundled sample data, with no download.

1. converts the bundled H-4 state dict of the authors' model (random weights) into an ehrnet
   checkpoint, as one converts their released COCO weights;
2. trains the smoke config (`experiments/smoke.py`: H-4, 128 px, a few steps) on the bundled
   images;
3. evaluates the trained model on those images with pycocotools;
4. predicts on them and draws the skeletons.
Twenty CPU steps learn next to nothing: the point is that every stage runs end to end.
"""

import argparse

EXAMPLE = """example (from the repository root):
  ehrnet demo                               # writes runs/demo/
  ehrnet demo --workdir /tmp/demo --set train.steps=40"""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "demo", help="convert, train, evaluate and predict on the bundled sample data",
      description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/demo", help="where everything is written")
  parser.add_argument("--config", default="experiments/smoke.py",
                      help="training config (default: the smoke config of this repository)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field of the training config (repeatable)")
  parser.set_defaults(run=run)


def run(args) -> int:
  import pathlib  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  from ehrnet_jax import samples  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.cli import main  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.config import split_config_arg  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.errors import UserError  # pylint: disable=import-outside-toplevel

  workdir = pathlib.Path(args.workdir)
  # Evaluation and prediction compile the same programs: let the second reuse the first's (in
  # the user's cache, JAX_COMPILATION_CACHE_DIR, if there is one).
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str((workdir / "jax_cache").absolute()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if not split_config_arg(args.config)[0].is_file():
    raise UserError(f"{args.config}: no such config; run `ehrnet demo` from the repository root "
                    "or pass --config")
  steps = [
      ("convert the authors' H-4 weights",
       ["convert", str(samples.reference_weights()), "--variant", "H-4",
        "--out", str(workdir / "H-4_reference"), "--overwrite"]),
      ("train on the bundled images",
       ["train", "--config", args.config, "--workdir", str(workdir / "train"),
        *[f"--set={item}" for item in args.set]]),
      ("evaluate the trained model",
       ["evaluate", "--variant", "H-4", "--checkpoint", str(workdir / "train" / "variables"),
        "--coco-dir", str(samples.coco_dir()), "--split", samples.SPLIT,
        "--out", str(workdir / "evaluate")]),
      ("predict and draw",
       ["predict", "--variant", "H-4", "--checkpoint", str(workdir / "train" / "variables"),
        "--out", str(workdir / "predict"), *map(str, samples.images())]),
  ]
  for number, (title, argv) in enumerate(steps, start=1):
    print(f"\n== {number}/{len(steps)} {title}: ehrnet {' '.join(argv)}", flush=True)
    status = main(argv)
    if status:
      return status
  print(f"\ndone: everything is in {workdir}/ (metrics: {workdir}/evaluate/metrics.json, "
        f"drawings: {workdir}/predict/)")
  return 0
