"""`ehrnet demo`: the main job on the bundled sample data, with no download.

Converts the bundled reference-format H-4 weights (the authors' model with random weights) into
an ehrnet checkpoint, runs the whole inference path (network with flip test, decoding, grouping)
on a bundled COCO photo and prints what came out.
"""

import argparse

EXAMPLE = """example:
  ehrnet demo                        # writes ehrnet_demo/ in the current directory
  ehrnet demo --workdir /tmp/demo --image my_photo.jpg"""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "demo", help="run the main job on the bundled sample data", description=__doc__,
      epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="ehrnet_demo", help="where outputs are written")
  parser.add_argument("--image", help="photo to run on (default: a bundled COCO image)")
  parser.set_defaults(run=run)


def run(args) -> int:
  import pathlib  # pylint: disable=import-outside-toplevel

  from ehrnet_jax import checkpoints, convert, inference, samples  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.scaling import ScalingSpec  # pylint: disable=import-outside-toplevel

  workdir = pathlib.Path(args.workdir)
  spec = ScalingSpec.from_name("H-4")
  weights = samples.reference_weights()
  print(f"1. converting {weights.name} (the authors' H-4 model, random weights)")
  variables = convert.convert_state_dict(convert.load_state_dict(weights), spec,
                                         source=str(weights))
  checkpoint = checkpoints.save_variables(workdir / "H-4_reference", variables, spec,
                                          source=str(weights), overwrite=True)
  print(f"   -> {checkpoint}")

  image_path = pathlib.Path(args.image) if args.image else samples.images()[0]
  image = inference.read_image(image_path)
  estimator = inference.jax_estimator(checkpoint, spec.name)
  (poses,) = estimator([image])
  print(f"2. {image_path.name} ({image.shape[1]}x{image.shape[0]}): {len(poses.people)} people "
        f"found (random weights: not meaningful); network {poses.seconds['network'] * 1e3:.0f} ms"
        f" (incl. compilation), decode {poses.seconds['decode'] * 1e3:.0f} ms, grouping "
        f"{poses.seconds['grouping'] * 1e3:.0f} ms")
  return 0
