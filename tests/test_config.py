"""Config files, dotted overrides and `ehrnet train --print-config`."""

import json
import pathlib

import pytest

from ehrnet_jax import cli
from ehrnet_jax.config import Config, load_config, override, parse_value
from ehrnet_jax.errors import UserError

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
# The reference's Example Configs (docs: reference-architecture.md section 1.5):
# variant -> (DATASET.INPUT_SIZE, TRAIN.IMAGES_PER_GPU).
REFERENCE = {"h0.py": ("H0", 512, 1), "h-1.py": ("H-1", 480, 6), "h-2.py": ("H-2", 448, 8),
             "h-3.py": ("H-3", 416, 10), "h-4.py": ("H-4", 384, 48)}


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


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_model_configs_follow_the_reference(name):
  from ehrnet_jax.training.tasks import make_task
  variant, input_size, batch = REFERENCE[name]
  config = load_config(EXPERIMENTS / name)
  task = make_task(config)
  assert (task.spec.name, task.input_size, config.data.per_device_batch) == (variant, input_size,
                                                                            batch)
  train = config.train
  assert (train.learning_rate, train.lr_milestones, train.lr_factor, train.epochs,
          train.warmup_epochs) == (1e-3, (200.0, 260.0), 0.1, 300.0, 0.0)
  assert (config.loss.heatmap_4, config.loss.heatmap_2, config.loss.pull,
          config.loss.push) == (1.0, 1.0, 1e-3, 1e-3)


@pytest.mark.parametrize("name", ["smoke.py", "overfit_coco_mini.py", *sorted(REFERENCE)])
def test_configs_document_their_command_and_expectation(name):
  config = load_config(EXPERIMENTS / name)
  assert isinstance(config, Config)
  text = (EXPERIMENTS / name).read_text()
  assert f"ehrnet train --config experiments/{name}" in text and "Expected" in text


def test_load_config_errors(tmp_path):
  with pytest.raises(UserError, match="no such file"):
    load_config(tmp_path / "missing.py")
  (tmp_path / "bad.py").write_text("x = 1\n")
  with pytest.raises(UserError, match="defines no get_config"):
    load_config(tmp_path / "bad.py")


def test_cli_print_config_applies_overrides(capsys):
  code = cli.main(["train", "--config", str(EXPERIMENTS / "h-4.py"), "--workdir", "/unused",
                   "--set", "train.epochs=10", "--set", "data.per_device_batch=4",
                   "--print-config"])
  printed = json.loads(capsys.readouterr().out)
  assert code == 0
  assert printed["train"]["epochs"] == 10.0 and printed["data"]["per_device_batch"] == 4
  assert printed["model"]["variant"] == "H-4"


def test_cli_reports_bad_override_without_traceback(capsys):
  code = cli.main(["train", "--config", str(EXPERIMENTS / "h-4.py"), "--workdir", "/unused",
                   "--set", "train.epochs=ten", "--print-config"])
  assert code == 2
  assert "train.epochs: cannot read 'ten' as float" in capsys.readouterr().err
