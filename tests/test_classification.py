"""Backbone classification through the shared trainer: recipe, optimiser, loss, task, runs.

The end-to-end runs train `TinyClassifier` (the real classifier's train step takes ~100 s to
compile on 2 CPU cores); `test_tasks_build_the_table_2_classifiers` checks the real model the
task builds, by shapes only.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ehrnet_jax import losses, weights
from ehrnet_jax.config import (Config, DataConfig, InitConfig, ModelConfig, RunConfig,
                               TrainConfig, load_config)
from ehrnet_jax.errors import UserError
from ehrnet_jax.models import EfficientNetClassifier, abstract_variables
from ehrnet_jax.training import loop, optim, tasks
from ehrnet_jax.training.evaluation import top_k_hits
from support.tiny_classification import TinyClassifier, mock_classification_tfds

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
SIZE = 32


def test_recipe_schedule_warms_up_then_decays_every_30_epochs():
  schedule = optim.learning_rate_schedule(load_config(EXPERIMENTS / "backbone.py").train,
                                          steps_per_epoch=10)
  steps = [0, 25, 50, 299, 300, 599, 600, 1799, 1800, 1999]
  # 1e-4 -> 0.05 linearly over 5 epochs (50 steps), then x0.1 at epochs 30, 60, ..., 180.
  expected = [1e-4, 1e-4 + 0.5 * (0.05 - 1e-4), 0.05, 0.05, 5e-3, 5e-3, 5e-4, 5e-7, 5e-8, 5e-8]
  np.testing.assert_allclose([schedule(s) for s in steps], expected, rtol=1e-4)  # float32


def test_sgd_with_coupled_weight_decay_matches_hand_computed_steps():
  config = TrainConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.01,
                       lr_milestones=())
  tx = optim.make_optimizer(config, steps_per_epoch=1)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.5])}
  state = tx.init(params)
  trajectory = []
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(np.asarray(params["w"]))
  # PyTorch SGD: d = g + wd p; buf = 0.9 buf + d (buf = d at first); p -= lr buf.
  # Step 1: d = [0.51, 0.48] -> p = [0.949, -2.048].
  # Step 2: d = [0.50949, 0.47952], buf = [0.96849, 0.91152] -> p = [0.852151, -2.139152].
  np.testing.assert_allclose(trajectory, [[0.949, -2.048], [0.852151, -2.139152]], rtol=1e-6)


def test_unknown_optimizer_is_a_user_error():
  with pytest.raises(UserError, match="train.optimizer='lamb'"):
    optim.make_optimizer(TrainConfig(optimizer="lamb"), steps_per_epoch=1)


def test_classification_loss_is_the_mean_cross_entropy():
  logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
  labels = np.array([0, 2], np.int32)
  total, components = losses.classification_loss(logits, {"label": labels})
  # -log softmax: ln(e^2 + 2) - 2 and ln(2 + e) - 0.
  expected = ((np.log(np.e**2 + 2) - 2) + np.log(2 + np.e)) / 2
  # float32 log-softmax against float64: a few ulps of XLA's vectorised exp and log (whose last
  # bits differ by ISA), amplified ~15x by the cancellation in ln(e^2 + 2) - 2 = 0.14.
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  assert components == {"cross_entropy": total}


def test_top_k_hits():
  logits = jnp.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],    # label 1: first
                      [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],    # label 4: fifth
                      [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])   # label 5: sixth
  hits = top_k_hits(logits, jnp.array([1, 4, 5]))
  np.testing.assert_array_equal(hits, [[True, False, False], [True, True, False]])


@pytest.mark.parametrize("variant, size", [("B0", 224), ("B-1", 195), ("B-2", 170),
                                           ("B-3", 145), ("B-4", 128)])
def test_tasks_build_the_table_2_classifiers(variant, size):
  config = Config(model=ModelConfig(variant=variant), data=DataConfig(dataset="cifar100"))
  task = tasks.make_task(config)
  assert (task.name, task.input_size, task.metric) == (variant, size, "top1")
  model = task.make_model()
  assert isinstance(model, EfficientNetClassifier) and model.num_classes == 100
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             train=False))
  kernel = shapes["params"]["classifier"]["kernel"]
  assert kernel.shape == (task.spec.classifier_channels, 100)


@pytest.mark.parametrize("update, message", [
    ({"data": DataConfig(dataset="mnist")}, "data.dataset='mnist'"),
    ({"model": ModelConfig(variant="B-2")}, "model.variant='B-2' is a backbone classifier"),
    ({"model": ModelConfig(variant="H-2"), "data": DataConfig(dataset="imagenet2012")},
     "unknown classifier variant 'H-2'"),
    ({"model": ModelConfig(variant="B-4", input_size=16),
      "data": DataConfig(dataset="imagenet2012")}, "model.input_size=16"),
])
def test_task_errors_name_the_field(update, message):
  with pytest.raises(UserError, match=message):
    tasks.make_task(Config(**update))


def test_pose_task_keeps_the_pose_defaults():
  task = tasks.make_task(Config())
  assert (task.name, task.input_size, task.metric) == ("H-4", 384, "ap")


def _tiny_config(dataset: str, steps: int, batch: int = 2, **train) -> Config:
  recipe = load_config(f"{EXPERIMENTS}/backbone.py:{dataset}")
  return Config(
      model=ModelConfig(variant="B-4", input_size=SIZE),
      data=dataclasses.replace(recipe.data, batch=batch, shuffle_buffer=8),
      train=dataclasses.replace(recipe.train, steps=steps, **train),
      run=RunConfig(log_every_steps=1, checkpoint_every_steps=steps, keep_checkpoints=1,
                    eval_every_steps=0, eval_split=recipe.run.eval_split))


@pytest.mark.slow
@pytest.mark.parametrize("dataset, num_classes", [("imagenet2012", 1000), ("cifar100", 100)])
def test_one_step_end_to_end_on_mock_tfds(tmp_path, dataset, num_classes):
  with mock_classification_tfds(tmp_path / "tfds", num_examples=6):
    state = loop.train(_tiny_config(dataset, steps=1), str(tmp_path / "run"),
                       model=TinyClassifier(num_classes))
  assert int(state.step) == 1
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().split(
      "\n") if line]
  train_row = next(r for r in rows if "loss" in r)
  assert np.isfinite(train_row["cross_entropy"]) and train_row["loss"] == train_row[
      "cross_entropy"]
  assert train_row["learning_rate"] == pytest.approx(1e-4, rel=1e-4)  # The warm-up's start.
  evaluation = next(r for r in rows if "eval/top1" in r)
  # 6 evaluation images: the hit fractions are multiples of 1/6.
  for key in ("eval/top1", "eval/top5"):
    assert 0.0 <= evaluation[key] <= 1.0 and evaluation[key] * 6 == pytest.approx(
        round(evaluation[key] * 6))
  metadata = weights.read_metadata(tmp_path / "run" / "variables")
  assert (metadata["variant"], metadata["num_classes"]) == ("B-4", num_classes)
  assert weights.read_metadata(tmp_path / "run" / "best")["num_classes"] == num_classes


class _TwoColours:
  """`TrainData`: 8 images, reddish (class 0) or bluish (class 1) with noise, every step."""
  num_examples = 8

  def __init__(self):
    rng = np.random.default_rng(0)
    labels = np.arange(8) % 2
    images = rng.integers(0, 120, (8, SIZE, SIZE, 3))
    images[labels == 0, ..., 0] += 120
    images[labels == 1, ..., 2] += 120
    self.batch = {"image": images.astype(np.uint8), "label": labels.astype(np.int32)}

  def batches(self, start_step):
    while True:
      yield self.batch


@pytest.mark.slow
def test_loss_falls_on_two_separable_classes(tmp_path):
  config = _tiny_config("cifar100", steps=10, batch=8, warmup_epochs=0.0)
  loop.train(config, str(tmp_path), data=_TwoColours(), model=TinyClassifier(2))
  losses_by_step = [json.loads(line)["loss"] for line in
                    (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(losses_by_step) == 10
  # Below half the first loss, and the last three below chance (ln 2): the classes are learnt.
  assert losses_by_step[-1] < 0.5 * losses_by_step[0], losses_by_step
  assert max(losses_by_step[-3:]) < np.log(2), losses_by_step


@pytest.mark.parametrize("config_arg, dataset, eval_split, eval_crop_fraction", [
    ("backbone.py:imagenet2012", "imagenet2012", "validation", 0.875),
    ("backbone.py", "imagenet2012", "validation", 0.875),
    ("backbone.py:cifar100", "cifar100", "test", 1.0)])
def test_backbone_experiment_holds_the_papers_recipe(config_arg, dataset, eval_split,
                                                     eval_crop_fraction):
  assert load_config(f"{EXPERIMENTS}/{config_arg}").model.variant == "B0"
  config = load_config(f"{EXPERIMENTS}/{config_arg}", ["model.variant=B-3"])
  train = config.train
  assert (config.data.dataset, config.run.eval_split, config.model.variant) == (
      dataset, eval_split, "B-3")
  assert (config.data.batch, config.data.eval_crop_fraction) == (512, eval_crop_fraction)
  assert (train.optimizer, train.momentum, train.weight_decay, train.learning_rate,
          train.warmup_epochs, train.warmup_init_lr, train.epochs, train.lr_factor) == (
              "sgd", 0.9, 1e-4, 0.05, 5.0, 1e-4, 200.0, 0.1)
  assert train.lr_milestones == (30.0, 60.0, 90.0, 120.0, 150.0, 180.0)
  assert (config.data.crop_area, config.data.color_jitter) == ((0.08, 1.0), 0.4)


@pytest.mark.slow
def test_classifier_checkpoint_backbone_initialises_a_pose_model(tmp_path):
  """`init.checkpoint` = a trained classifier: the pose run starts from its backbone."""
  task = tasks.make_task(Config(model=ModelConfig(variant="B-4"),
                                data=DataConfig(dataset="cifar100")))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype),
                           abstract_variables(EfficientNetClassifier(task.spec, 100)))
  task.save(str(tmp_path / "b-4"), variables, source="test")
  pose = tasks.make_task(Config(model=ModelConfig(variant="H-4", input_size=64),
                                init=InitConfig(checkpoint=str(tmp_path / "b-4"))))
  initial = loop._initial_variables(pose, pose.make_model(), jax.random.key(0))  # pylint: disable=protected-access
  for collection in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, initial[collection]["backbone"],
                 variables[collection]["backbone"])
  assert set(initial["params"]) == {"backbone", "hrnet", "head"}
