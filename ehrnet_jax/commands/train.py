"""`ehrnet train`: train (or resume training) a model from an experiment config: the pose
model on COCO, or the backbone-only classifier on imagenet2012 / cifar100 (data.dataset)."""

import argparse
import json

from ehrnet_jax.commands import _distributed

EXAMPLE = """examples:
  ehrnet train --config experiments/smoke.py --workdir /tmp/smoke
  ehrnet train --config experiments/coco_pose.py:H-4 --workdir runs/H-4 \\
      --set data.coco_dir=~/data/coco --set data.tfds_dir=~/tensorflow_datasets/coco
  ehrnet train --config experiments/coco_pose.py:H-4 --workdir runs/H-4 --print-config
  ehrnet train --config experiments/backbone.py:imagenet2012 --set model.variant=B-2 \\
      --set data.manual_dir=~/imagenet --workdir runs/B-2      (backbone classifier, Table 2)
  ehrnet train --config experiments/coco_pose.py:H-2 --workdir runs/H-2 \\
      --set init.checkpoint=runs/B-2/variables                 (pose from that backbone)

--config FILE.py:ARG passes ARG to the file's get_config(arg) (coco_pose.py: the variant,
backbone.py: the dataset); FILE.py alone runs get_config with its default.

Every config field can be overridden with --set SECTION.FIELD=VALUE (repeatable), e.g.
--set train.epochs=10 --set train.lr_milestones=5,8 --set train.freeze_backbone=true.
Running the same command again resumes from the latest checkpoint in --workdir.

Multi-process (one command per host / process, same config and work dir):
  ehrnet train ... --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0   (and 1)
  ehrnet train ... --distributed      (Cloud TPU pods, SLURM, Open MPI: detected by JAX)
data.batch is the global batch (all devices of all processes); each process reads
data.batch / processes images per step. Set JAX_COMPILATION_CACHE_DIR=DIR to reuse compiled
steps across restarts; --set train.deterministic=true makes GPU steps bit-reproducible.
"""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "train", help="train a model from an experiment config (resumes from --workdir)",
      description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, metavar="FILE[:ARG]",
                      help="experiment config file and its argument, e.g. "
                           "experiments/coco_pose.py:H-4")
  parser.add_argument("--workdir", required=True, metavar="DIR",
                      help="checkpoints, logs and the trained model go here")
  parser.add_argument("--set", action="append", default=[], dest="overrides",
                      metavar="KEY=VALUE", help="override a config field (repeatable)")
  parser.add_argument("--print-config", action="store_true",
                      help="print the resolved config as JSON and exit")
  _distributed.add_arguments(parser)
  parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  from ehrnet_jax.config import load_config
  from ehrnet_jax.training.tasks import make_task
  config = load_config(args.config, args.overrides)
  make_task(config)  # Checks the model and dataset fields before anything starts.
  if args.print_config:
    print(json.dumps(config.to_dict(), indent=2))
    return 0
  if config.train.deterministic:  # Before JAX's backend starts.
    from ehrnet_jax.training import distributed
    distributed.request_deterministic_ops()
  _distributed.start(args)
  from ehrnet_jax.training import loop
  state = loop.train(config, args.workdir)
  print(json.dumps({"workdir": args.workdir, "step": int(state.step),
                    "model": f"{args.workdir}/variables"}))
  return 0
