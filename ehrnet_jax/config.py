"""Training configuration: frozen dataclasses, config files and dotted command-line overrides.

An experiment is a Python file (see `experiments/`) defining `get_config(arg) -> Config`, as
big_vision's configs do: `FILE.py:ARG` passes the string ARG (e.g. the variant of
`experiments/coco_pose.py:H-2`), plain `FILE.py` runs get_config() with its default (or with
none, for experiments that take no argument). The recipes live in the experiment files; this
module holds only the data, its parsing and the loading. Every field can be overridden with
`--set SECTION.FIELD=VALUE`; the value is parsed according to the field's type (bool:
true/false/1/0/yes/no; tuples: `200,260` or `(200, 260)`; optional fields: `none`).

  config = load_config("experiments/coco_pose.py:H-4",
                       ["train.epochs=10", "data.batch=32"])

No dependency beyond the standard library; configs are immutable and hashable, so they can be
passed to jitted functions as static arguments.
"""

import ast
import dataclasses
import importlib.util
import inspect
import os
import pathlib
import types
import typing
from typing import Any, Sequence

from ehrnet_jax.errors import UserError
from ehrnet_jax.losses import LossWeights


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which network to train: the pose model, or the backbone-only classifier (data.dataset)."""
  # Pose (data.dataset=coco): "H0" ... "H-4"; classifier (imagenet2012, cifar100): "B0" ... "B-4"
  # (the paper's Table 2). Either also "phi=<number>", e.g. "phi=-2.5" (ScalingSpec.from_phi).
  variant: str = "H-4"
  # Training crop; None = the variant's own. Pose: a multiple of 32. Classifier: any size >= 32
  # (Table 2: 224, 195, 170, 145, 128 for B0 ... B-4).
  input_size: int | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Training data: a COCO-layout folder built once into a TFDS dataset (`ehrnet_jax.data`), or
  a TFDS classification dataset (`ehrnet_jax.data.classification`)."""
  # "coco" trains the pose model; "imagenet2012" or "cifar100" the backbone classifier.
  dataset: str = "coco"
  # annotations/person_keypoints_{train,val}2017.json + train2017/, val2017/;
  # "" = the sample images bundled in the package (ehrnet_jax/sample_data).
  coco_dir: str = ""
  # Where the TFDS dataset of coco_dir is built (once); "" = <workdir>/tfds. Use one directory
  # per COCO folder (the dataset's name does not depend on the folder). For imagenet2012 and
  # cifar100: TFDS's data dir; "" = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  tfds_dir: str = ""
  # imagenet2012 only: the folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
  # (TFDS's manual download), read once when the dataset is first built.
  manual_dir: str = ""
  split: str = "train"  # TFDS split: train (train2017), validation (val2017).
  # The GLOBAL batch of one optimiser step: all devices of all processes together. It must be a
  # multiple of the device count; each device trains on batch / devices examples, each
  # process's input pipeline reads batch / processes.
  batch: int = 8
  # Classification (tf.data) only: the epoch shuffle's buffer. COCO shuffles whole epochs.
  shuffle_buffer: int = 2048
  # COCO: worker processes decoding and augmenting the images (Grain); 0 = threads of the
  # training process, the fastest on a small machine (2 cores: docs/benchmarks/input_pipeline.md).
  # Feeding accelerators, give it most of the host's cores. Any value gives the same batches.
  workers: int = 0
  # The random affine and flip (the reference's values; ehrnet_jax.data.augment.AugmentConfig).
  max_rotation: float = 30.0  # Degrees.
  min_scale: float = 0.75  # Crop side = short image side * U[min_scale, max_scale).
  max_scale: float = 1.5
  max_translate: float = 40.0  # Pixels (times the scale).
  flip_probability: float = 0.5  # Horizontal flip (pose and classification).
  # Classification augmentation, torchvision's RandomResizedCrop and ColorJitter: the crop's
  # area fraction and aspect ratio ranges (then resized to the input size), and the brightness,
  # contrast and saturation jitter (each factor uniform in [1 - j, 1 + j]).
  crop_area: tuple[float, ...] = (0.08, 1.0)
  crop_aspect: tuple[float, ...] = (3 / 4, 4 / 3)
  color_jitter: float = 0.4
  # Classification evaluation: shorter side resized to input_size / eval_crop_fraction, then the
  # central input_size square (0.875: 256 -> 224, torchvision's ImageNet evaluation).
  eval_crop_fraction: float = 0.875


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimiser, schedule and run length."""
  epochs: float = 300.0
  # Total optimiser steps; 0 = epochs * steps_per_epoch (the dataset size / the global batch).
  steps: int = 0
  learning_rate: float = 1e-3
  lr_milestones: tuple[float, ...] = (200.0, 260.0)  # In epochs; lr *= lr_factor at each.
  lr_factor: float = 0.1
  warmup_epochs: float = 0.0  # Linear warm-up from warmup_init_lr (the reference has none).
  warmup_init_lr: float = 0.0  # The warm-up's first learning rate.
  # "adam" (the reference's pose recipe: PyTorch's defaults) or "sgd" (heavy-ball momentum as
  # PyTorch's SGD: buf = momentum * buf + grad, param -= lr * buf).
  optimizer: str = "adam"
  momentum: float = 0.9  # sgd only.
  # L2 weight decay coupled as in PyTorch (grad += weight_decay * param, every parameter, before
  # the optimiser); 0 = none (the reference's pose training ignores it).
  weight_decay: float = 0.0
  # Keep the backbone's parameters fixed (its BN statistics still update and drop-connect stays
  # on, as in the reference). Off by default: it only makes sense with a pretrained backbone
  # (init.checkpoint), which the reference loads and this project cannot ship.
  freeze_backbone: bool = False
  compute_dtype: str = "float32"  # "bfloat16" for TPUs: bf16 activations, f32 master weights.
  # How float32 convolutions and matrix products are computed (JAX's
  # jax_default_matmul_precision, set around the whole run): "highest" in float32; "high" and
  # "default" let the backend trade precision for speed (TF32, inputs rounded to 10 mantissa
  # bits instead of 23, on NVIDIA GPUs since Ampere; three or one bfloat16 passes on TPU);
  # XLA:CPU computes float32 whatever the setting. "highest", so that a float32 run means float32
  # on every device and its numbers do not depend on the GPU generation (the parity with the
  # reference holds to float32 rounding). The authors' PyTorch let cuDNN run convolutions in
  # TF32, its default, on GPUs that have it; "default" is the like of that. On TPU "highest"
  # makes the convolutions ~3-6x slower: there use "default", or compute_dtype="bfloat16", whose
  # bf16 products this setting does not touch.
  matmul_precision: str = "highest"
  # How the network's primitives are lowered (ehrnet_jax.models.ExecutionForm): "auto" (the
  # fastest training form on this backend: `ExecutionForm.for_backend`) or a named form such as
  # "plain" (XLA's own primitives and autodiff everywhere) or "accelerator_training".
  execution_form: str = "auto"
  # Training batch norm's statistics: "per_device" (each device's own shard of the batch: the
  # reference's PyTorch DDP without SyncBN) or "cross_replica" (the whole global batch, through
  # a collective over the devices, as SyncBN or Flax's BatchNorm(axis_name=...)). With one
  # device they are the same.
  batch_norm: str = "per_device"
  # Bit-reproducible steps on GPUs: XLA's deterministic ops (--xla_gpu_deterministic_ops, set
  # by `ehrnet train` before JAX starts); the backward pass of the loss's gathers (scatter-adds)
  # then runs without atomics, somewhat slower. CPU and TPU steps are deterministic without it.
  deterministic: bool = False
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """Where the initial weights come from (default: the model's random initialisation)."""
  # An ehrnet checkpoint directory (pose model or backbone classifier: `ehrnet convert`,
  # `ehrnet train`), or with backbone_only a .pth/.npz EfficientNet state dict in the reference's
  # narumiruna layout (its MODEL.PRETRAINED); see ehrnet_jax.backbones.
  checkpoint: str = ""
  backbone_only: bool = True  # Take only the backbone (params and BN statistics) from it.


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Logging, checkpointing and evaluation cadence."""
  log_every_steps: int = 50
  checkpoint_every_steps: int = 1000
  keep_checkpoints: int = 3  # The latest N, plus the best by AP (pose) or top-1 (classifier).
  eval_every_steps: int = 0  # 0 = evaluate only at the end; -1 = never.
  eval_split: str = "validation"  # TFDS split to evaluate on (cifar100 has "test").
  eval_max_images: int = 0  # 0 = every image of the split.


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a training run needs; the `get_config` of `experiments/*.py` returns one."""
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  loss: LossWeights = LossWeights()
  train: TrainConfig = TrainConfig()
  init: InitConfig = InitConfig()
  run: RunConfig = RunConfig()

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# Fields that were replaced: their dotted name -> what to use instead.
REPLACED_FIELDS = {
    "data.per_device_batch": "it was replaced by data.batch, the GLOBAL batch (all devices of "
                             "all processes; per device: data.batch / the device count)",
}


def _is_optional(kind) -> tuple[bool, Any]:
  """(True, T) for `T | None`, else (False, kind)."""
  if typing.get_origin(kind) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if len(args) == 1 and len(typing.get_args(kind)) == 2:
      return True, args[0]
  return False, kind


def parse_value(text: str, kind, name: str = "value"):
  """Parses `text` as the annotated type `kind`; raises UserError naming `name` otherwise."""
  optional, kind = _is_optional(kind)
  if optional and text.strip().lower() in ("none", "null", ""):
    return None
  try:
    if kind is bool:
      lowered = text.strip().lower()
      if lowered in ("1", "true", "yes", "on"):
        return True
      if lowered in ("0", "false", "no", "off"):
        return False
      raise ValueError(text)
    if kind in (int, float):
      value = ast.literal_eval(text.strip())
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(text)
      if kind is int and value != int(value):
        raise ValueError(text)
      return kind(value)
    if kind is str:
      return text
    if typing.get_origin(kind) is tuple:
      (item_kind, _) = typing.get_args(kind)
      stripped = text.strip().strip("()[]")
      items = [s for s in (p.strip() for p in stripped.split(",")) if s]
      return tuple(parse_value(item, item_kind, name) for item in items)
  except (ValueError, SyntaxError) as error:
    raise UserError(f"{name}: cannot read {text!r} as {_type_name(kind)}") from error
  raise TypeError(f"{name}: unsupported field type {kind}")


def _type_name(kind) -> str:
  return getattr(kind, "__name__", str(kind))


def override(config: Config, assignment: str) -> Config:
  """Returns `config` with one `section.field=value` assignment applied."""
  key, sep, text = assignment.partition("=")
  key = key.strip()
  if not sep:
    raise UserError(f"override {assignment!r}: expected KEY=VALUE, e.g. train.epochs=10")
  if key in REPLACED_FIELDS:
    raise UserError(f"override {key!r}: {REPLACED_FIELDS[key]}")
  return _replace(config, key.split("."), text, key)


def _replace(node, path: list[str], text: str, key: str):
  fields = {f.name: f for f in dataclasses.fields(node)}
  name = path[0]
  if name not in fields:
    raise UserError(f"override {key!r}: {type(node).__name__} has no field {name!r}; "
                    f"fields are {', '.join(fields)}")
  current = getattr(node, name)
  if dataclasses.is_dataclass(current):
    if len(path) == 1:
      raise UserError(f"override {key!r}: {name!r} is a section; set one of its fields, "
                      f"e.g. {key}.{dataclasses.fields(current)[0].name}=...")
    return dataclasses.replace(node, **{name: _replace(current, path[1:], text, key)})
  if len(path) > 1:
    raise UserError(f"override {key!r}: {name!r} is a field, not a section")
  kind = typing.get_type_hints(type(node))[name]
  return dataclasses.replace(node, **{name: parse_value(text, kind, key)})


def split_config_arg(text: str | os.PathLike) -> tuple[pathlib.Path, str | None]:
  """`FILE.py:ARG` -> (FILE.py, ARG); `FILE.py` -> (FILE.py, None).

  The split is at the last `.py:`, so a path that holds a colon elsewhere (a Windows drive)
  stays whole, and ARG is passed to get_config() as written (it may be empty).
  """
  text = os.fspath(text)
  head, sep, arg = text.rpartition(".py:")
  if not sep:
    return pathlib.Path(text), None
  return pathlib.Path(head + ".py"), arg


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
  """Runs the config file's `get_config([arg])` and applies the `section.field=value` overrides.

  `path` is `FILE.py` or `FILE.py:ARG`; ARG, a string, is get_config's one argument (e.g.
  `experiments/coco_pose.py:H-2`, the variant), and without it get_config runs with its default.
  """
  file, arg = split_config_arg(path)
  get_config = _get_config_of(file)
  args = () if arg is None else (arg,)
  where = f"config {os.fspath(path)}"
  try:
    inspect.signature(get_config).bind(*args)
  except TypeError as error:
    raise UserError(f"{where}: " + (
        f"get_config() needs an argument: {file}:ARG (see the file's docstring)" if arg is None
        else f"get_config() takes no argument: use {file} without ':{arg}'")) from error
  try:
    config = get_config(*args)
  except UserError as error:  # A bad ARG: say which file and argument.
    raise UserError(f"{where}: {error}") from error
  except TypeError as error:  # A config written for an older version of the fields?
    _raise_if_replaced(where, error)
    raise
  if not isinstance(config, Config):
    raise UserError(f"{where}: get_config() returned {type(config).__name__}, "
                    f"expected ehrnet_jax.config.Config")
  for assignment in overrides:
    config = override(config, assignment)
  return config


def _raise_if_replaced(where: str, error: TypeError) -> None:
  """A UserError when `error` is a dataclass refusing a field of `REPLACED_FIELDS`."""
  for key, advice in REPLACED_FIELDS.items():
    if f"unexpected keyword argument '{key.rsplit('.', 1)[1]}'" in str(error):
      raise UserError(f"{where}: {key}: {advice}") from error


def _get_config_of(file: pathlib.Path):
  """Imports the experiment file by its path (experiments/ is no package) -> its get_config."""
  if not file.is_file():
    raise UserError(f"config {file}: no such file (configs live in experiments/, e.g. "
                    f"experiments/coco_pose.py:H-4)")
  module_name = "ehrnet_experiment_" + "".join(c if c.isalnum() else "_" for c in file.stem)
  spec = importlib.util.spec_from_file_location(module_name, file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise UserError(f"config {file}: defines no get_config() function")
  return get_config
