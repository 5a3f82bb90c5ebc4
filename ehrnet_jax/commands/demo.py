"""`ehrnet demo`: the main job on the bundled sample data, with no download.

Converts the bundled reference-format H-4 weights (the authors' model with random weights) into
an ehrnet checkpoint, runs the network on a bundled COCO photo and prints what came out.
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

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from ehrnet_jax import checkpoints, convert, samples  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.images import load_rgb, network_input  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.models import EfficientHRNet  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.scaling import ScalingSpec  # pylint: disable=import-outside-toplevel

  workdir = pathlib.Path(args.workdir)
  spec = ScalingSpec.from_name("H-4")
  print(f"1. converting {samples.reference_weights().name} (the authors' H-4, random weights)")
  variables = convert.convert_state_dict(convert.load_state_dict(samples.reference_weights()),
                                         spec, source=str(samples.reference_weights()))
  checkpoint = checkpoints.save_variables(workdir / "H-4_reference", variables, spec,
                                          overwrite=True)
  print(f"   -> {checkpoint}")
  variables, spec = checkpoints.load_variables(checkpoint, spec)

  image_path = pathlib.Path(args.image) if args.image else samples.images()[0]
  image = load_rgb(image_path)
  inputs = network_input(image, spec.input_size)
  print(f"2. {image_path.name}: {image.shape[1]}x{image.shape[0]} -> network input "
        f"{inputs.shape[2]}x{inputs.shape[1]}")
  model = EfficientHRNet(spec)
  outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, inputs)
  print(f"3. {spec.name} outputs (random weights: values are not meaningful):")
  for name, value in outputs._asdict().items():
    value = np.asarray(value)
    print(f"   {name:>10}: shape {value.shape}, min {value.min():.3f}, max {value.max():.3f}, "
          f"mean {value.mean():.3f}")
  return 0
