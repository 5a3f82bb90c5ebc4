"""`ehrnet demo`: the main job on the bundled sample data, with no download.

1. converts the bundled H-4 state dict of the authors' model (random weights) into an ehrnet
   checkpoint, as one converts their released COCO weights;
2. trains the smoke config (`experiments/smoke.py`: H-4, 128 px, a few steps) on the bundled
   images;
3. evaluates the trained model on those images with pycocotools;
4. predicts on them and draws the skeletons.
Twenty CPU steps learn next to nothing: the point is that every stage runs end to end. The demo
ends by saying so and how to get real predictions (`CLOSING_WORDS`).
"""

import argparse

# The authors' COCO weights: the "Pretrained Models" section of their README links a Google Drive
# folder with H0 ... H-4 (github.com/TeCSAR-UNCC/EfficientHRNet at 802cc95).
REAL_PREDICTIONS = ("ehrnet convert H-4.pth --variant H-4 --out checkpoints/H-4",
                    "ehrnet predict --variant H-4 --checkpoint checkpoints/H-4 --out runs/predict "
                    "photos/")
CLOSING_WORDS = f"""
What the numbers mean: the model trained for a few CPU steps from random weights, so it finds
no people or spurious ones, and an AP near 0 is expected; the demo shows that every stage runs.
For real predictions, download the authors' COCO weights of a model (H0 ... H-4, linked under
"Pretrained Models" in https://github.com/TeCSAR-UNCC/EfficientHRNet), e.g. H-4 saved as H-4.pth,
then (reading .pth files needs `pip install -e '.[torch]'`):
  {REAL_PREDICTIONS[0]}
  {REAL_PREDICTIONS[1]}"""

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
  # pylint: disable=import-outside-toplevel
  import json
  import pathlib

  from ehrnet_jax import convert, samples, weights
  from ehrnet_jax.config import load_config, split_config_arg
  from ehrnet_jax.errors import UserError
  from ehrnet_jax.inference import coco_evaluation, jax_decoder, predict
  from ehrnet_jax.scaling import ScalingSpec
  from ehrnet_jax.training import loop
  # pylint: enable=import-outside-toplevel

  workdir = pathlib.Path(args.workdir)
  # Evaluation and prediction compile the same programs: the second loads the first's from the
  # persistent compilation cache that `ehrnet_jax.cli` turns on.
  if not split_config_arg(args.config)[0].is_file():
    raise UserError(f"{args.config}: no such config; run `ehrnet demo` from the repository root "
                    "or pass --config")
  config = load_config(args.config, args.set)
  spec = ScalingSpec.from_name("H-4")
  trained = workdir / "train" / "variables"

  _step(1, "convert the authors' H-4 weights")
  state_dict = convert.load_state_dict(samples.reference_weights())
  converted = weights.save_variables(
      workdir / "H-4_reference", convert.convert_state_dict(state_dict, spec), spec,
      source=str(samples.reference_weights()), overwrite=True)
  print(f"converted {len(state_dict)} arrays -> {converted}")

  _step(2, "train on the bundled images")
  state = loop.train(config, str(workdir / "train"))
  print(f"trained {int(state.step)} steps -> {trained}")

  _step(3, "evaluate the trained model")
  estimator = jax_decoder.jax_estimator(trained, spec.name)
  source = coco_evaluation.coco_folder(samples.coco_dir(), samples.SPLIT)
  evaluation = coco_evaluation.evaluate(estimator, source, verbose=True)
  metrics_path = coco_evaluation.write_outputs(
      workdir / "evaluate", evaluation, {"variant": spec.name, "checkpoint": str(trained),
                                         "split": samples.SPLIT, "scales": [1.0], "flip": True})
  print(json.dumps({name: round(value, 4) for name, value in evaluation.stats.items()}))

  _step(4, "predict and draw")
  files = predict.check_inputs(map(str, samples.images()))
  entries = predict.predict(estimator, files, workdir / "predict").entries
  print(f"{len(entries)} people in {len(files)} input(s)")
  print(f"\ndone: everything is in {workdir}/ (metrics: {metrics_path}, drawings: "
        f"{workdir}/predict/)")
  print(CLOSING_WORDS)
  return 0


def _step(number: int, title: str) -> None:
  print(f"\n== {number}/4 {title}", flush=True)
