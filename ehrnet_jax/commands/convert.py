"""`ehrnet convert`: the authors' PyTorch weights -> an ehrnet (orbax) checkpoint."""

import argparse

EXAMPLE = """example:
  ehrnet convert pose_higher_hrnet_H-4.pth --variant H-4 --out checkpoints/H-4
  ehrnet convert H-2_state_dict.npz --variant H-2 --out checkpoints/H-2

  ehrnet convert efficientnet-b-2.pth --variant B-2 --out checkpoints/B-2

SRC is a state dict of the reference model (TeCSAR-UNCC/EfficientHRNet): a .pth as released
(plain, under "state_dict", or with "module." prefixes; needs the [torch] extra) or an .npz with
the same key names. With a classifier variant (B0 ... B-4) SRC is a compact EfficientNet
classifier in the narumiruna/efficientnet-pytorch layout the reference loads its backbone from
(features.* with ZeroPad2d, classifier.1). Every key must map onto the variant: missing,
unexpected and mis-shaped keys are listed by name. To start pose training from such a backbone,
pass the file or the converted checkpoint as --set init.checkpoint=... to `ehrnet train`."""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "convert", help="convert the authors' PyTorch checkpoint to an ehrnet checkpoint",
      description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", metavar="SRC", help="reference state dict (.pth/.pt/.tar/.npz)")
  parser.add_argument("--variant", required=True,
                      help="model the weights belong to: H0, H-1, ..., H-4 (or phi=<number>), "
                      "or a backbone classifier B0, B-1, ..., B-4")
  parser.add_argument("--out", required=True, help="checkpoint directory to create")
  parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  parser.set_defaults(run=run)


def run(args) -> int:
  from ehrnet_jax import convert, weights  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.scaling import (  # pylint: disable=import-outside-toplevel
      CLASSIFIER_VARIANTS, ScalingSpec, classifier_variant)

  weights.check_new_directory(args.out, args.overwrite)  # Before the conversion, not after it.
  state_dict = convert.load_state_dict(args.source)
  if args.variant in CLASSIFIER_VARIANTS:
    spec, _ = classifier_variant(args.variant)
    variables, num_classes = convert.convert_classifier_state_dict(state_dict, spec,
                                                                   source=args.source)
    name = f"{spec.classifier_name}, {num_classes} classes"
  else:
    spec, num_classes = ScalingSpec.from_name(args.variant), None
    variables = convert.convert_state_dict(state_dict, spec, source=args.source)
    name = spec.name
  directory = weights.save_variables(args.out, variables, spec, source=str(args.source),
                                         overwrite=args.overwrite, num_classes=num_classes)
  print(f"converted {len(state_dict)} arrays of {args.source} ({name}) -> {directory}")
  return 0
