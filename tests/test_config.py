"""Config files, dotted overrides and `ehrnet train --print-config`."""

import json
import pathlib

import numpy as np
import pytest

from ehrnet_jax import cli
from ehrnet_jax.config import Config, load_config, override, parse_value, split_config_arg
from ehrnet_jax.errors import UserError

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
# The reference's Example Configs (docs: reference-architecture.md section 1.5), all on one GPU:
# variant -> (DATASET.INPUT_SIZE, TRAIN.IMAGES_PER_GPU = the global batch).
REFERENCE = {"H0": (512, 1), "H-1": (480, 6), "H-2": (448, 8), "H-3": (416, 10), "H-4": (384, 48)}


@pytest.mark.parametrize("text, kind, expected", [
    ("true", bool, True), ("0", bool, False), ("12", int, 12), ("1e-4", float, 1e-4),
    ("3", float, 3.0), ("200,260", tuple[float, ...], (200.0, 260.0)),
    ("(5, 8)", tuple[float, ...], (5.0, 8.0)), ("", tuple[float, ...], ()),
    ("none", int | None, None), ("64", int | None, 64), ("a=b", str, "a=b"),
])
def test_parse_value(text, kind, expected):
  assert parse_value(text, kind) == expected


@pytest.mark.parametrize("text, kind", [("maybe", bool), ("1.5", int), ("x", float),
                                        ("True", int), ("1,a", tuple[float, ...])])
def test_parse_value_rejects_with_the_key_named(text, kind):
  with pytest.raises(UserError, match="train.some_field"):
    parse_value(text, kind, "train.some_field")


def test_override_replaces_one_field_only():
  config = override(Config(), "train.lr_milestones=5,8")
  assert config.train.lr_milestones == (5.0, 8.0)
  assert config.train.learning_rate == Config().train.learning_rate
  assert config.data == Config().data
  assert override(config, "model.input_size=none").model.input_size is None


@pytest.mark.parametrize("assignment, message", [
    ("train.lr=1", "no field 'lr'; fields are epochs, steps"),
    ("train=1", "'train' is a section"),
    ("train.epochs.x=1", "'epochs' is a field, not a section"),
    ("train.epochs", "expected KEY=VALUE"),
])
def test_override_errors(assignment, message):
  with pytest.raises(UserError, match=message):
    override(Config(), assignment)


@pytest.mark.parametrize("config_arg, variant", [
    *((f"coco_pose.py:{name}", name) for name in REFERENCE), ("coco_pose.py", "H-4")])
def test_pose_experiment_follows_the_reference(config_arg, variant):
  from ehrnet_jax.training.optim import learning_rate_schedule
  from ehrnet_jax.training.tasks import make_task
  input_size, batch = REFERENCE[variant]
  config = load_config(f"{EXPERIMENTS}/{config_arg}")
  task = make_task(config)
  assert (task.spec.name, task.input_size, config.data.batch) == (variant, input_size, batch)
  assert (config.data.dataset, config.data.coco_dir, config.data.split) == ("coco", "data/coco",
                                                                           "train")
  train = config.train
  assert (train.optimizer, train.learning_rate, train.lr_milestones, train.lr_factor,
          train.epochs, train.warmup_epochs, train.weight_decay, train.freeze_backbone) == (
              "adam", 1e-3, (200.0, 260.0), 0.1, 300.0, 0.0, 0.0, False)
  assert (config.loss.heatmap_4, config.loss.heatmap_2, config.loss.pull,
          config.loss.push) == (1.0, 1.0, 1e-3, 1e-3)
  # 10 steps an epoch: 1e-3 until epoch 200, 1e-4 until 260, then 1e-5.
  schedule = learning_rate_schedule(train, steps_per_epoch=10)
  np.testing.assert_allclose([schedule(s) for s in (0, 1999, 2000, 2599, 2600, 2999)],
                             [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)  # float32
  assert (config.run.eval_every_steps, config.run.eval_split,
          config.run.keep_checkpoints) == (20000, "validation", 3)


@pytest.mark.parametrize("name, command", [
    ("smoke.py", "experiments/smoke.py"),
    ("overfit_coco_mini.py", "experiments/overfit_coco_mini.py"),
    ("coco_pose.py", "experiments/coco_pose.py:H-4"),
    ("backbone.py", "experiments/backbone.py:imagenet2012"),
    ("backbone.py", "experiments/backbone.py:cifar100")])
def test_configs_document_their_command_and_expectation(name, command):
  assert isinstance(load_config(EXPERIMENTS.parent / command), Config)
  text = (EXPERIMENTS / name).read_text()
  assert f"ehrnet train --config {command} " in text and "Expected" in text


@pytest.mark.parametrize("text, path, arg", [
    ("experiments/coco_pose.py:H-4", "experiments/coco_pose.py", "H-4"),
    ("experiments/coco_pose.py", "experiments/coco_pose.py", None),
    ("experiments/coco_pose.py:", "experiments/coco_pose.py", ""),
    ("C:/runs/x.py/coco_pose.py:phi=-2.5", "C:/runs/x.py/coco_pose.py", "phi=-2.5"),
    (pathlib.Path("a/smoke.py"), "a/smoke.py", None),
])
def test_split_config_arg(text, path, arg):
  assert split_config_arg(text) == (pathlib.Path(path), arg)


@pytest.mark.parametrize("config_arg, message", [
    ("coco_pose.py:H-5", r"coco_pose.py:H-5: unknown variant 'H-5'; expected one of H0, H-1, "
                         r"H-2, H-3, H-4$"),
    ("coco_pose.py:h-4", "unknown variant 'h-4'"),
    ("backbone.py:imagenet", r"backbone.py:imagenet: unknown dataset 'imagenet'; expected one of "
                             r"imagenet2012, cifar100$"),
    ("smoke.py:H-4",
     r"smoke.py:H-4: get_config\(\) takes no argument: use .*smoke.py without ':H-4'"),
])
def test_bad_experiment_argument_names_the_file_and_the_choices(config_arg, message):
  with pytest.raises(UserError, match=message):
    load_config(EXPERIMENTS / config_arg)


def test_the_replaced_per_device_batch_is_refused_naming_the_global_batch(tmp_path):
  replaced = "it was replaced by data.batch, the GLOBAL batch"
  with pytest.raises(UserError, match=f"override 'data.per_device_batch': {replaced}"):
    override(Config(), "data.per_device_batch=4")
  (tmp_path / "old.py").write_text(
      "from ehrnet_jax.config import Config, DataConfig\n"
      "def get_config():\n  return Config(data=DataConfig(per_device_batch=4))\n")
  with pytest.raises(UserError, match=f"config .*old.py: data.per_device_batch: {replaced}"):
    load_config(tmp_path / "old.py")


@pytest.mark.parametrize("batch, devices, nearest", [(12, 8, "8 or 16"), (3, 8, "8"),
                                                      (0, 2, "2"), (-4, 2, "2")])
def test_a_global_batch_that_does_not_split_over_the_devices_is_refused(batch, devices, nearest):
  from ehrnet_jax.training.mesh import check_batch
  with pytest.raises(UserError, match=rf"data.batch={batch}: .* multiple of the device count, "
                                      rf"{devices} .*; nearest valid: {nearest}$"):
    check_batch(batch, devices)
  check_batch(2 * devices, devices)  # A multiple passes.


def test_load_config_errors(tmp_path):
  with pytest.raises(UserError, match="missing.py: no such file .* experiments/coco_pose.py:H-4"):
    load_config(tmp_path / "missing.py:H-4")
  (tmp_path / "bad.py").write_text("x = 1\n")
  with pytest.raises(UserError, match="defines no get_config"):
    load_config(tmp_path / "bad.py")
  (tmp_path / "needs_arg.py").write_text("def get_config(arg):\n  return arg\n")
  with pytest.raises(UserError, match=r"get_config\(\) needs an argument: .*needs_arg.py:ARG"):
    load_config(tmp_path / "needs_arg.py")
  with pytest.raises(UserError, match=r"needs_arg.py:x: get_config\(\) returned str, expected"):
    load_config(tmp_path / "needs_arg.py:x")


def test_cli_print_config_applies_overrides(capsys):
  code = cli.main(["train", "--config", f"{EXPERIMENTS}/coco_pose.py:H-2", "--workdir", "/unused",
                   "--set", "train.epochs=10", "--set", "data.batch=32",
                   "--print-config"])
  printed = json.loads(capsys.readouterr().out)
  assert code == 0
  assert printed["train"]["epochs"] == 10.0 and printed["data"]["batch"] == 32
  assert printed["model"]["variant"] == "H-2"


def test_cli_reports_bad_override_without_traceback(capsys):
  code = cli.main(["train", "--config", f"{EXPERIMENTS}/coco_pose.py", "--workdir", "/unused",
                   "--set", "train.epochs=ten", "--print-config"])
  assert code == 2
  assert "train.epochs: cannot read 'ten' as float" in capsys.readouterr().err
