"""Conversion of the authors' PyTorch state dicts into Flax variables.

`key_map(spec)` lists, for every layer of the reference model, its state-dict prefix, the path of
the matching Flax module and the kind of layer; `convert_state_dict` applies it, checking that
every key is used exactly once with the right shape. Nothing is skipped silently: the only keys
without a Flax counterpart are BN's `num_batches_tracked` counters, which PyTorch uses only when
`momentum=None` (never in this model) and which are checked and counted, not copied.

The backbone is the EfficientNet of narumiruna/efficientnet-pytorch in the layout the reference
expects (`features.*`, each conv preceded by a ZeroPad2d, so a conv-BN pair is `.1`/`.2`):
`convert_classifier_state_dict` reads a whole classifier of that layout (backbone, 1x1 head conv,
`classifier.1` linear layer) and `convert_backbone_state_dict` takes only the backbone's keys of
any such state dict (a classifier or the pose model), reporting which keys it used and skipped.
"""

import pathlib
import pickle
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ehrnet_jax.errors import UserError
from ehrnet_jax.models import (BACKBONE, EfficientHRNet, EfficientNetClassifier, abstract_variables,
                               backbone_variables)
from ehrnet_jax.scaling import ScalingSpec

Path = tuple[str, ...]
# (state-dict prefix, Flax module path, layer kind)
Entry = tuple[str, Path, str]
CONV, CONV_BIAS, BN, DENSE, DENSE_FROM_1X1, CONV_TRANSPOSE = (
    "conv", "conv_bias", "bn", "dense", "dense_from_1x1", "conv_transpose")

# Per layer kind: state-dict suffix -> (collection, Flax variable name, layout conversion).
_conv = lambda w: np.transpose(w, (2, 3, 1, 0))        # (O, I, kh, kw) -> (kh, kw, I, O)
_linear = lambda w: np.transpose(w, (1, 0))             # (O, I) -> (I, O)
_dense = lambda w: np.transpose(w[:, :, 0, 0], (1, 0))  # (O, I, 1, 1) -> (I, O)
_identity = lambda w: w
LAYER_VARIABLES = {
    CONV: {"weight": ("params", "kernel", _conv)},
    CONV_BIAS: {"weight": ("params", "kernel", _conv), "bias": ("params", "bias", _identity)},
    DENSE: {"weight": ("params", "kernel", _linear), "bias": ("params", "bias", _identity)},
    DENSE_FROM_1X1: {"weight": ("params", "kernel", _dense), "bias": ("params", "bias", _identity)},
    # Flax ConvTranspose(transpose_kernel=True) wants (kh, kw, O, I) from torch's (I, O, kh, kw).
    CONV_TRANSPOSE: {"weight": ("params", "kernel", _conv)},
    BN: {"weight": ("params", "scale", _identity), "bias": ("params", "bias", _identity),
         "running_mean": ("batch_stats", "mean", _identity),
         "running_var": ("batch_stats", "var", _identity),
         "num_batches_tracked": None},
}


def _conv_bn(prefix_conv: str, prefix_bn: str, path: Path, conv_kind: str = CONV
             ) -> Iterator[Entry]:
  yield prefix_conv, path + ("conv",), conv_kind
  yield prefix_bn, path + ("bn",), BN


def backbone_key_map(spec: ScalingSpec) -> Iterator[Entry]:
  """The backbone (`features.*`, the narumiruna EfficientNet layout the reference uses)."""
  prefix, path = "features", (BACKBONE,)
  yield from _conv_bn(f"{prefix}.0.1", f"{prefix}.0.2", path + ("stem",))
  index = 1
  for stage in spec.backbone_stages:
    for _ in range(stage.repeats):
      block, block_path = f"{prefix}.{index}.conv", path + (f"block_{index}",)
      layer = 0
      if stage.expand_ratio != 1:
        yield from _conv_bn(f"{block}.0.1", f"{block}.0.2", block_path + ("expand",))
        layer = 1
      yield from _conv_bn(f"{block}.{layer}.1", f"{block}.{layer}.2", block_path + ("depthwise",))
      yield f"{block}.{layer + 1}.se.1", block_path + ("se", "reduce"), DENSE_FROM_1X1
      yield f"{block}.{layer + 1}.se.3", block_path + ("se", "expand"), DENSE_FROM_1X1
      yield from _conv_bn(f"{block}.{layer + 2}", f"{block}.{layer + 3}", block_path + ("project",))
      index += 1


def _basic_block(prefix: str, path: Path) -> Iterator[Entry]:
  for n in (1, 2):
    yield from _conv_bn(f"{prefix}.conv{n}", f"{prefix}.bn{n}", path + (f"conv{n}",))


def hrnet_key_map(spec: ScalingSpec, path: Path = ("hrnet",)) -> Iterator[Entry]:
  """Transitions (`transK_branchB`) and stages (`stageS.M.{branches,fuse_layers}`)."""
  def trans(name):
    yield from _conv_bn(f"{name}.0", f"{name}.1", path + (name,), CONV_BIAS)

  yield from trans("trans1_branch1")
  yield from trans("trans1_branch2")
  for stage, num_modules in enumerate(spec.stage_modules, start=2):
    if stage > 2:
      for b in range(1, stage + 1):
        yield from trans(f"trans{stage - 1}_branch{b}")
    for m in range(num_modules):
      prefix, module_path = f"stage{stage}.{m}", path + (f"stage{stage}_module{m}",)
      for b in range(stage):
        for k in range(spec.blocks_per_branch):
          yield from _basic_block(f"{prefix}.branches.{b}.{k}", module_path + (f"branch{b}_block{k}",))
      outputs = 1 if (stage == 4 and m == num_modules - 1) else stage
      for i in range(outputs):
        for j in range(stage):
          fuse = f"{prefix}.fuse_layers.{i}.{j}"
          if j > i:
            yield from _conv_bn(f"{fuse}.0", f"{fuse}.1", module_path + (f"fuse{i}_{j}",))
          for step in range(i - j):
            yield from _conv_bn(f"{fuse}.{step}.0", f"{fuse}.{step}.1",
                                module_path + (f"fuse{i}_{j}_step{step}",))


def head_key_map(spec: ScalingSpec, path: Path = ("head",)) -> Iterator[Entry]:
  """`final_layers.{0,1}` and `deconv_layers.0.*`."""
  yield "final_layers.0", path + ("final_4",), CONV_BIAS
  yield "deconv_layers.0.0.0", path + ("deconv",), CONV_TRANSPOSE
  yield "deconv_layers.0.0.1", path + ("deconv_bn",), BN
  for k in range(spec.head_blocks):
    yield from _basic_block(f"deconv_layers.0.{k + 1}.0", path + (f"deconv_block{k}",))
  yield "final_layers.1", path + ("final_2",), CONV_BIAS


def key_map(spec: ScalingSpec) -> list[Entry]:
  """Every layer of the reference EfficientHRNet for `spec`, in state-dict order."""
  return [*backbone_key_map(spec), *hrnet_key_map(spec), *head_key_map(spec)]


def classifier_key_map(spec: ScalingSpec) -> list[Entry]:
  """Every layer of the narumiruna EfficientNet classifier (ZeroPad layout) for `spec`: the
  backbone, the 1x1 head conv `features.<blocks + 1>` and the linear layer `classifier.1`."""
  head = f"features.{spec.num_backbone_blocks + 1}"
  return [*backbone_key_map(spec), *_conv_bn(f"{head}.1", f"{head}.2", ("head_conv",)),
          ("classifier.1", ("classifier",), DENSE)]


def normalise_state_dict(state_dict: Mapping, source: str) -> dict[str, np.ndarray]:
  """Unwraps `{"state_dict": ...}` and strips DataParallel/DDP `module.` prefixes; every value
  must be a tensor or a numeric array."""
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
    state_dict = state_dict["state_dict"]
  arrays = {}
  for key, value in state_dict.items():
    if not isinstance(key, str):
      raise UserError(f"{source}: state-dict key {key!r} is not a string")
    name = key.removeprefix("module.")
    if name in arrays:
      raise UserError(f"{source}: key {name!r} appears twice (with and without 'module.')")
    arrays[name] = _numeric_array(value, f"{source}: {key!r}")
  return arrays


def _numeric_array(value, where: str) -> np.ndarray:
  if hasattr(value, "numpy") and hasattr(value, "is_floating_point"):   # a torch tensor
    value = (value.float() if value.is_floating_point() else value).numpy()   # bfloat16 too
  array = np.asarray(value) if isinstance(value, (np.ndarray, np.generic, int, float)) else None
  if array is None or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
    raise UserError(f"{where} is a {type(value).__name__}, not a tensor; expected a state dict "
                    "(names -> tensors of numbers)")
  return array


REFUSED_PTH = ("{path}: refused: its pickle would run Python code{what} rather than hold only "
               "tensors, and ehrnet loads nothing but a state dict of tensors. Use the authors' "
               "released file; if you made this one, save only the tensors: "
               "torch.save(model.state_dict(), PATH)")
UNREADABLE = ("{path}: cannot read it as {kind} (truncated, damaged or another kind of file?); "
              "expected the authors' .pth state dict or an .npz of the same names -> arrays")


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a `.pth`/`.pt`/`.tar` (PyTorch, tensors only) or `.npz` (numeric arrays only) state
  dict as NumPy arrays.

  Nothing in the file is ever run or unpickled: a `.pth` whose pickle names any code, or an
  `.npz` holding object arrays, is refused with a `UserError`, as is a truncated or foreign file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{path}: no such file (expected the authors' .pth state dict or an .npz "
                    "with the same key names)")
  if path.suffix == ".npz":
    return normalise_state_dict(_read_npz(path), str(path))
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"{path}: reading PyTorch checkpoints needs torch; install the extra with "
                    "`pip install -e '.[torch]'` (or convert the file to .npz)") from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as error:
    # PyTorch's message advises loading the file unsafely; it is never relayed.
    if "weights only load failed" not in str(error).lower():
      raise UserError(UNREADABLE.format(path=path, kind="a PyTorch file")) from None
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    raise UserError(REFUSED_PTH.format(path=path, what=f" ({code[1]})" if code else "")) \
        from None
  except Exception:  # pylint: disable=broad-except  # torch raises many types for bad files
    raise UserError(UNREADABLE.format(path=path, kind="a PyTorch file")) from None
  if not isinstance(loaded, Mapping):
    raise UserError(f"{path}: expected a state dict (a mapping of names to tensors), "
                    f"found {type(loaded).__name__}")
  return normalise_state_dict(loaded, str(path))


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The arrays of an .npz archive, after checking every header: object arrays (pickles) are
  refused by name, before NumPy reads any data."""
  try:
    with zipfile.ZipFile(path) as archive:
      for member in archive.namelist():
        with archive.open(member) as stream:
          version = np.lib.format.read_magic(stream)
          read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                         else np.lib.format.read_array_header_2_0)
          if read_header(stream)[2].hasobject:
            raise UserError(
                f"{path}: array {member.removesuffix('.npy')!r} holds Python objects (a pickle), "
                "which ehrnet never loads; expected numeric arrays only. If you made the file, "
                "save numbers: np.savez(PATH, **{name: np.asarray(a, np.float32) ...})")
    with np.load(path, allow_pickle=False) as data:
      return {name: data[name] for name in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
    if isinstance(error, UserError):
      raise
    raise UserError(UNREADABLE.format(path=path, kind="an .npz archive")) from None


def _get(tree: Mapping, path: Path):
  for name in path:
    tree = tree[name]
  return tree


def _set(tree: dict, path: Path, value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _convert(state_dict: Mapping[str, np.ndarray], entries: list[Entry], target: dict,
             source: str, model_name: str, allow_unused: bool = False) -> tuple[dict, list[str]]:
  """Applies `entries`; returns the variables (the structure of `target`) and the keys used.

  Raises `UserError` listing every missing, mis-shaped and (unless `allow_unused`) unexpected
  key by name.
  """
  variables, missing, misshaped, used = {}, [], [], []
  for prefix, path, kind in entries:
    for suffix, destination in LAYER_VARIABLES[kind].items():
      key = f"{prefix}.{suffix}"
      if key not in state_dict:
        missing.append(key)
        continue
      used.append(key)
      if destination is None:
        continue
      collection, name, to_flax = destination
      expected = _get(target[collection], path + (name,)).shape
      value = np.asarray(state_dict[key])
      converted = _convert_layout(to_flax, value)
      if converted is None or converted.shape != expected:
        misshaped.append(f"{key}: {tuple(value.shape)} does not fit {'/'.join(path + (name,))} "
                         f"{tuple(expected)}")
        continue
      _set(variables.setdefault(collection, {}), path + (name,),
           jnp.asarray(converted, dtype=jnp.float32))
  unexpected = [] if allow_unused else sorted(set(state_dict) - set(used))
  if missing or unexpected or misshaped:
    problems = [f"{len(missing)} missing: {_listing(missing)}" if missing else "",
                f"{len(unexpected)} unexpected: {_listing(unexpected)}" if unexpected else "",
                f"{len(misshaped)} mis-shaped: {_listing(misshaped)}" if misshaped else ""]
    raise UserError(f"{source} does not match {model_name}; "
                    + "; ".join(p for p in problems if p)
                    + ". Is it the checkpoint of another variant (see `ehrnet info`)?")
  if jax.tree.structure(variables) != jax.tree.structure(target):
    raise RuntimeError(f"internal error: the key map of {model_name} does not cover every "
                       "variable")
  return variables, used


def convert_state_dict(state_dict: Mapping[str, np.ndarray], spec: ScalingSpec,
                       source: str = "state dict") -> dict:
  """Reference state dict -> `{"params": ..., "batch_stats": ...}` for `EfficientHRNet(spec)`.

  Raises `UserError` listing every missing, unexpected or mis-shaped key by name.
  """
  variables, _ = _convert(state_dict, key_map(spec), abstract_variables(EfficientHRNet(spec)),
                          source, f"variant {spec.name}")
  return variables


def _check_zero_pad_layout(state_dict: Mapping[str, np.ndarray], source: str) -> None:
  if "features.0.0.weight" in state_dict:
    raise UserError(
        f"{source} has the newer narumiruna/efficientnet-pytorch layout (the stem conv at "
        "features.0.0, symmetric padding, BN eps 1e-3): a different network from the one the "
        "reference builds (ZeroPad2d before each conv, the stem conv at features.0.1, BN eps "
        "1e-5), whose strict=False loading would skip these keys silently. Use a checkpoint of "
        "the ZeroPad layout (the authors' compact backbones), or train one with "
        "experiments/backbone.py:imagenet2012")


def convert_classifier_state_dict(state_dict: Mapping[str, np.ndarray], spec: ScalingSpec,
                                  source: str = "state dict") -> tuple[dict, int]:
  """A narumiruna EfficientNet classifier (ZeroPad layout) -> (variables of
  `EfficientNetClassifier(spec, num_classes)`, num_classes)."""
  _check_zero_pad_layout(state_dict, source)
  if np.ndim(state_dict.get("classifier.1.weight")) != 2:
    raise UserError(f"{source}: no classifier.1.weight (num_classes x features) found; is it "
                    "an EfficientNet classifier of narumiruna/efficientnet-pytorch?")
  num_classes = int(np.shape(state_dict["classifier.1.weight"])[0])
  variables, _ = _convert(state_dict, classifier_key_map(spec),
                          abstract_variables(EfficientNetClassifier(spec, num_classes)), source,
                          f"classifier {spec.classifier_name}")
  return variables, num_classes


def convert_backbone_state_dict(state_dict: Mapping[str, np.ndarray], spec: ScalingSpec,
                                source: str = "state dict") -> tuple[dict, list[str], list[str]]:
  """The backbone keys (`features.0` ... `features.<blocks>`) of a ZeroPad-layout state dict.

  Returns the pose model's backbone variables `{"params": {"backbone": ...}, "batch_stats":
  {"backbone": ...}}`, the keys used and the keys skipped (a classifier's head conv and linear
  layer, a pose model's HR network and head). Missing or mis-shaped backbone keys raise.
  """
  _check_zero_pad_layout(state_dict, source)
  target = backbone_variables(abstract_variables(EfficientHRNet(spec)))
  variables, used = _convert(state_dict, list(backbone_key_map(spec)), target, source,
                             f"the backbone of {spec.name}", allow_unused=True)
  skipped = sorted(set(state_dict) - set(used))
  return variables, used, skipped


def _convert_layout(to_flax, value: np.ndarray) -> np.ndarray | None:
  """The array in Flax layout, or None when its rank does not fit the layer."""
  try:
    return to_flax(value)
  except (IndexError, ValueError):
    return None


def _listing(names: list[str], limit: int = 12) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
