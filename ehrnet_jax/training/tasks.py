"""What the one training loop and step need to know about the model being trained: the task.

`make_task(config)` picks it from `data.dataset`:
- "coco": `PoseTask`, EfficientHRNet `H0 ... H-4` on COCO keypoints: on-device heatmap and tag
  targets (`targets.prepare_batch`), `losses.pose_loss`, COCO AP ("ap") ranks the checkpoints.
- "imagenet2012", "cifar100": `ClassificationTask`, the backbone-only classifier `B0 ... B-4`
  of the paper's Table 2 (`EfficientNetClassifier`, input sizes 224/195/170/145/128): ImageNet
  normalisation on device, softmax cross-entropy, top-1 accuracy ("top1") ranks them.

A task provides the model, the host-to-device batch preparation (run on each device inside the
SPMD step), the loss, the default input pipeline and evaluation hook, and the final model's
save. The model trains in the execution form `train.execution_form` names, with batch norm's
statistics over the global batch when `train.batch_norm` is "cross_replica".
"""

import abc
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ehrnet_jax import losses, weights
from ehrnet_jax.config import Config
from ehrnet_jax.errors import UserError
from ehrnet_jax.images import normalize
from ehrnet_jax.models import EfficientHRNet, EfficientNetClassifier, ExecutionForm
from ehrnet_jax.models.execution import NAMES as EXECUTION_FORMS
from ehrnet_jax.scaling import CLASSIFIER_VARIANTS, ScalingSpec, classifier_variant
from ehrnet_jax.training.input import Batch, ClassificationTrainData, CocoTrainData, TrainData
from ehrnet_jax.training.mesh import AXIS
from ehrnet_jax.training.step import LossFn

# (variables, spec) -> metrics, including the task's ranking metric.
EvaluateFn = Callable[[dict[str, Any], ScalingSpec], dict[str, float]]
CLASSIFICATION_CLASSES = {"imagenet2012": 1000, "cifar100": 100}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# train.batch_norm -> the form's batch_norm_axis.
_BATCH_NORM_AXES = {"per_device": None, "cross_replica": AXIS}


def _training_form(config: Config) -> ExecutionForm:
  """The execution form `train.execution_form` names ("auto": the fastest on this backend), its
  batch norm per device or cross-replica as `train.batch_norm` says."""
  name = config.train.execution_form
  if name not in EXECUTION_FORMS + ("auto",):
    raise UserError(f"train.execution_form={name!r}: expected auto or one of "
                    f"{', '.join(EXECUTION_FORMS)}")
  if config.train.batch_norm not in _BATCH_NORM_AXES:
    raise UserError(f"train.batch_norm={config.train.batch_norm!r}: expected one of "
                    f"{', '.join(_BATCH_NORM_AXES)}")
  form = (ExecutionForm.for_backend(jax.default_backend(), train=True) if name == "auto"
          else ExecutionForm.named(name))
  return dataclasses.replace(form, batch_norm_axis=_BATCH_NORM_AXES[config.train.batch_norm])


def _compute_dtype(config: Config):
  if config.train.compute_dtype not in _DTYPES:
    raise UserError(f"train.compute_dtype={config.train.compute_dtype!r}: expected one of "
                    f"{', '.join(_DTYPES)}")
  return _DTYPES[config.train.compute_dtype]


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
  """The task of `config`: its model spec, training input size and name (the resume check)."""
  config: Config
  spec: ScalingSpec
  input_size: int
  name: str
  metric = ""  # The evaluation metric that ranks checkpoints (higher is better).

  @abc.abstractmethod
  def make_model(self) -> nn.Module:
    """The network (`train.compute_dtype` activations)."""

  @property
  @abc.abstractmethod
  def loss_fn(self) -> LossFn:
    """`(model outputs, prepared batch) -> (total, components)`."""

  @abc.abstractmethod
  def prepare(self, batch: Batch) -> Batch:
    """Host batch -> training batch, on each device inside the step (jittable)."""

  @abc.abstractmethod
  def train_data(self, workdir: str) -> TrainData:
    """The input pipeline of `config.data`."""

  @abc.abstractmethod
  def evaluator(self, data: TrainData, model: nn.Module) -> EvaluateFn:
    """The evaluation hook on `run.eval_split` of the dataset `data` trains on."""

  @abc.abstractmethod
  def save(self, directory: str, variables: dict[str, Any], source: str) -> None:
    """Saves the trained model (`ehrnet_jax.weights` format), replacing `directory`."""

  @abc.abstractmethod
  def load_whole(self, directory: str) -> dict[str, Any]:
    """The variables of a checkpoint of this very model (`init.backbone_only=false`)."""


class PoseTask(Task):
  """EfficientHRNet on COCO keypoints (the config's defaults; the reference's training)."""
  metric = "ap"

  @classmethod
  def from_config(cls, config: Config) -> "PoseTask":
    variant = config.model.variant
    if variant in CLASSIFIER_VARIANTS:
      raise UserError(f"model.variant={variant!r} is a backbone classifier: train it on "
                      f"data.dataset={' or '.join(CLASSIFICATION_CLASSES)}, or train a pose "
                      f"model H{variant[1:]} on coco")
    spec = ScalingSpec.from_name(variant)
    size = config.model.input_size or spec.input_size
    spec.check_input_shape(size, size)
    return cls(config, spec, size, spec.name)

  def make_model(self) -> nn.Module:
    return EfficientHRNet(self.spec, _training_form(self.config),
                          dtype=_compute_dtype(self.config))

  @property
  def loss_fn(self) -> LossFn:
    return functools.partial(losses.pose_loss, weights=self.config.loss)

  def prepare(self, batch: Batch) -> Batch:
    from ehrnet_jax.data import targets  # TensorFlow-free; only needed once training starts.
    return targets.prepare_batch(batch)

  def train_data(self, workdir: str) -> TrainData:
    return CocoTrainData(self.config.data, self.input_size, self.config.train.seed, workdir)

  def evaluator(self, data: CocoTrainData, model: nn.Module) -> EvaluateFn:
    from ehrnet_jax.training.evaluation import CocoEvaluator
    run = self.config.run
    return CocoEvaluator(data.tfds_dir, run.eval_split, self.input_size, run.eval_max_images)

  def save(self, directory: str, variables: dict[str, Any], source: str) -> None:
    weights.save_variables(directory, variables, self.spec, source=source, overwrite=True)

  def load_whole(self, directory: str) -> dict[str, Any]:
    return weights.load_variables(directory, expected=self.spec)[0]


class ClassificationTask(Task):
  """The backbone-only classifier on TFDS imagenet2012 or cifar100 (the paper's Table 2)."""
  metric = "top1"

  @classmethod
  def from_config(cls, config: Config) -> "ClassificationTask":
    spec, size = classifier_variant(config.model.variant)
    size = config.model.input_size or size
    if size < 32:
      raise UserError(f"model.input_size={size}: the classifier needs at least 32 pixels (its "
                      f"total stride)")
    if not 0.0 < config.data.eval_crop_fraction <= 1.0:
      raise UserError(f"data.eval_crop_fraction={config.data.eval_crop_fraction}: expected a "
                      f"fraction in (0, 1]")
    return cls(config, spec, size, spec.classifier_name)

  @property
  def num_classes(self) -> int:
    return CLASSIFICATION_CLASSES[self.config.data.dataset]

  def make_model(self) -> nn.Module:
    return EfficientNetClassifier(self.spec, self.num_classes, form=_training_form(self.config),
                                  dtype=_compute_dtype(self.config))

  @property
  def loss_fn(self) -> LossFn:
    return losses.classification_loss

  def prepare(self, batch: Batch) -> Batch:
    return {"image": normalize(batch["image"], jnp), "label": batch["label"].astype(jnp.int32)}

  def train_data(self, workdir: str) -> TrainData:
    return ClassificationTrainData(self.config.data, self.input_size, self.config.train.seed)

  def evaluator(self, data: ClassificationTrainData, model: nn.Module) -> EvaluateFn:
    from ehrnet_jax.training.evaluation import ClassificationEvaluator
    config = self.config
    return ClassificationEvaluator(model, data.builder, config.run.eval_split, self.input_size,
                                   config.data.eval_crop_fraction,
                                   config.data.batch // jax.device_count(),
                                   config.run.eval_max_images)

  def save(self, directory: str, variables: dict[str, Any], source: str) -> None:
    weights.save_variables(directory, variables, self.spec, source=source, overwrite=True,
                               num_classes=self.num_classes)

  def load_whole(self, directory: str) -> dict[str, Any]:
    variables, spec, num_classes = weights.load_classifier(directory)
    if (spec, num_classes) != (self.spec, self.num_classes):
      raise UserError(f"init.checkpoint={directory}: holds {spec.classifier_name} with "
                      f"{num_classes} classes, this run trains {self.name} with "
                      f"{self.num_classes}; set init.backbone_only=true to take its backbone")
    return variables


def make_task(config: Config) -> Task:
  """The task `config.data.dataset` selects."""
  dataset = config.data.dataset
  if dataset == "coco":
    return PoseTask.from_config(config)
  if dataset in CLASSIFICATION_CLASSES:
    return ClassificationTask.from_config(config)
  raise UserError(f"data.dataset={dataset!r}: expected coco (pose) or "
                  f"{', '.join(CLASSIFICATION_CLASSES)} (backbone classifier)")

