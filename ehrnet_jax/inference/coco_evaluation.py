"""COCO keypoint evaluation: run a `PoseEstimator` over a split, write results, score them.

Images come from a COCO folder (`ROOT/annotations/person_keypoints_SPLIT.json` and
`ROOT/SPLIT/*.jpg`) or from the TFDS dataset built by `ehrnet data` (`ehrnet_jax.data.coco_tfds`,
read by index through `tfds.data_source`, without TensorFlow).
As in the reference, every image of the split is run, every person found is kept (no OKS-NMS or
rescoring), and pycocotools' keypoint metrics are reported by name.

`evaluate` shares the work between the processes of a multi-process run (`Processes`; a
`jax.distributed` one: `ehrnet_jax.training.process_exchange`): each runs every
`count`-th image id (from its `index`), grouped by network input size and batched by the
estimator's `batch_size` (one image per local device for JAX). The people found are gathered,
process 0 scores them once and shares the stats, so every process returns the same `Evaluation`,
whose results are in image id order (then the image's order) however the work was shared.

An image that cannot be read is warned about and listed (`Evaluation.failed`); it stays in the
scored images, with no people found. With an `out_dir`, each process streams its images' people
to `out_dir/partial/process-K.jsonl` (one flushed line per image, keyed by image id), and a rerun
with the same settings (`result_log`) skips the image ids found in every `partial/*.jsonl` that
process 0 sees, whatever the number of processes then; failed images are tried again.
"""

import dataclasses
import io
import json
import pathlib
import statistics
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import tqdm

from ehrnet_jax import atomic
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import coco_results, result_log
from ehrnet_jax.inference.estimator import PoseEstimator
from ehrnet_jax.inference.inputs import UnreadableInput, check_input, decode_image, read_image
from ehrnet_jax.inference.progress import compiling_notice, warn

TFDS_SPLITS = {"val2017": "validation", "train2017": "train"}
PARTS = ("network", "decode", "grouping")
PARTIAL_DIR = "partial"
OUTPUTS = (PARTIAL_DIR, "results.json", "metrics.json")
# People (P, J, 3), scores (P,) and seconds per part of one image.
Found = tuple[np.ndarray, np.ndarray, dict]


@dataclasses.dataclass
class Source:
  """What to evaluate: ground truth, the split's sorted image ids, and
  `images(ids) -> (image_id, RGB uint8 or the UnreadableInput saying why not)` pairs for exactly
  those ids, in that order."""
  ground_truth: object          # pycocotools.coco.COCO
  image_ids: list[int]
  images: Callable[[Sequence[int]], Iterator[tuple[int, np.ndarray | UnreadableInput]]]
  # The images found unreadable before any ran (a folder's headers checked), by image id.
  unreadable: dict[int, UnreadableInput] = dataclasses.field(default_factory=dict)


def coco_folder(root, split: str = "val2017", max_images: int | None = None,
                image_ids=None) -> Source:
  """A COCO folder: `root/annotations/person_keypoints_{split}.json` and `root/{split}/`.

  All images of the split (or only `image_ids`), in id order, at most `max_images`. Every
  image's header is checked first (`Source.unreadable`).
  """
  root = pathlib.Path(root)
  ground_truth = coco_results.load_ground_truth(_annotation_file(root, split))
  if not (root / split).is_dir():
    raise UserError(f"{root / split}: image folder not found; --coco-dir must hold the images of "
                    f"split {split} in {split}/")
  image_ids = sorted(ground_truth.imgs if image_ids is None else image_ids)[:max_images]
  path_of = {i: root / split / ground_truth.imgs[i]["file_name"] for i in image_ids}
  unreadable = {}
  for image_id, path in path_of.items():
    try:
      check_input(path)
    except UnreadableInput as error:
      unreadable[image_id] = error

  def images(ids: Sequence[int]) -> Iterator[tuple[int, np.ndarray | UnreadableInput]]:
    for image_id in ids:
      try:
        if image_id in unreadable:
          raise unreadable[image_id]
        yield image_id, read_image(path_of[image_id])
      except UnreadableInput as error:
        yield image_id, error

  return Source(ground_truth, image_ids, images, unreadable)


def _annotation_file(root: pathlib.Path, split: str) -> pathlib.Path:
  """`root/annotations/person_keypoints_{split}.json`; a UserError naming the splits found."""
  path = root / "annotations" / f"person_keypoints_{split}.json"
  if path.is_file():
    return path
  if not root.is_dir():
    raise UserError(f"{root}: no such folder; --coco-dir must be the COCO root holding "
                    "annotations/ and the split's images (e.g. val2017/)")
  splits = sorted(f.stem.removeprefix("person_keypoints_")
                  for f in (root / "annotations").glob("person_keypoints_*.json"))
  hint = (f"pass --split {' or '.join(splits)}" if splits else
          "unpack COCO's annotations_trainval2017.zip (cocodataset.org) there")
  raise UserError(f"{path}: annotation file not found; {hint}")


def tfds_dataset(data_dir, split: str = "validation", max_images: int | None = None) -> Source:
  """The dataset built by `ehrnet data` (TFDS); the ground truth is rebuilt from its records.

  The same images as `coco_folder` on the COCO folder it was built from: in id order, at most
  `max_images`. Read by index through `tfds.data_source` (no TensorFlow); `images(ids)` decodes
  only the images asked for.
  """
  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.data import coco_tfds, pipeline
  # pylint: enable=import-outside-toplevel
  split = TFDS_SPLITS.get(split, split)
  source = pipeline.open_split(coco_tfds.load_builder(data_dir), split, "--split")
  # Every record without its image bytes (read again by `images`, only those evaluated).
  records = [{k: v for k, v in source[i].items() if k != "image"} for i in range(len(source))]
  index_of = {int(r["image_id"]): i for i, r in enumerate(records)}
  image_ids = sorted(index_of)[:max_images]
  ground_truth = _ground_truth(records[index_of[i]] for i in image_ids)

  def images(ids: Sequence[int]) -> Iterator[tuple[int, np.ndarray | UnreadableInput]]:
    for image_id in ids:
      try:
        yield image_id, decode_image(source[index_of[image_id]]["image"],
                                     f"{data_dir}: image {image_id}")
      except UnreadableInput as error:
        yield image_id, error

  return Source(ground_truth, image_ids, images)


def _ground_truth(records):
  """A pycocotools COCO object from the TFDS records: the COCO json's images and annotations
  (crowds included, values as in the json), so that both sources score alike."""
  # pylint: disable=import-outside-toplevel
  from pycocotools.coco import COCO
  from ehrnet_jax import console, keypoints
  from ehrnet_jax.data import annotations
  # pylint: enable=import-outside-toplevel
  dataset = {"images": [], "annotations": [], "categories": [{
      "id": 1, "name": "person", "keypoints": list(keypoints.COCO.joints),
      "skeleton": [[a + 1, b + 1] for a, b in keypoints.COCO.skeleton]}]}
  for record in records:
    image_id = int(record["image_id"])
    dataset["images"].append({"id": image_id, "height": int(record["height"]),
                              "width": int(record["width"])})
    dataset["annotations"] += annotations.coco_annotations(record["annotations_json"], image_id)
  ground_truth = COCO()
  ground_truth.dataset = dataset
  with console.library_output():  # pycocotools' "creating index... index created!"
    ground_truth.createIndex()
  return ground_truth


class Processes(Protocol):
  """The processes sharing an evaluation: this one's `index` of `count`, and byte exchange."""
  index: int
  count: int

  def gather(self, data: bytes) -> list[bytes]:
    """Every process's `data`, by process index, on every process."""
    ...

  def share(self, data: bytes) -> bytes:
    """Process 0's `data` on every process (the others' `data` is ignored)."""
    ...


class OneProcess:
  """`Processes` of a single-process run."""
  index, count = 0, 1

  def gather(self, data: bytes) -> list[bytes]:
    return [data]

  def share(self, data: bytes) -> bytes:
    return data


@dataclasses.dataclass
class Evaluation:
  results: list[dict]          # COCO result entries, by image id then the image's order
  stats: dict[str, float]      # pycocotools metrics by name ("AP", "AR", ...)
  seconds: list[dict]          # per image, by image id: seconds per part (PARTS)
  failed: list[dict] = dataclasses.field(default_factory=list)   # {"image_id", "file", "reason"}
  resumed: int = 0             # images whose people came from an earlier run's partial files


def evaluate(estimator: PoseEstimator, source: Source, progress: bool = True,
             verbose: bool = False, processes: Processes = OneProcess(), out_dir=None,
             settings: dict | None = None, overwrite: bool = False) -> Evaluation:
  """Runs `estimator` on every image of `source` and scores the results with pycocotools.

  With several `processes`, each runs its share of the images (see the module docstring) and all
  must call this together; the progress bar and `verbose` summary are process 0's. With an
  `out_dir`, the results are streamed there and a rerun resumes (module docstring): `settings`
  (JSON values) must match the earlier run's (UserError otherwise), `overwrite` starts over.
  """
  main = processes.index == 0
  done = _resume(out_dir, settings or {}, overwrite, processes)
  image_ids = [i for i in source.image_ids if i not in done][processes.index::processes.count]
  found, failed = {}, []
  log = (result_log.ResultLog(pathlib.Path(out_dir) / PARTIAL_DIR /
                              f"process-{processes.index}.jsonl") if out_dir else None)
  with tqdm.tqdm(total=len(image_ids), unit="image", disable=not (progress and main)) as bar:
    for image_id, result in _estimate(estimator, source.images(image_ids), bar):
      if isinstance(result, UnreadableInput):
        warn(f"{result}; skipped (scored as an image with no people found)")
        failed.append({"image_id": image_id, **result.record()})
        continue
      found[image_id] = result
      if log:
        log.append(_record(image_id, result))
  if log:
    log.close()
  gathered = [_decode(data) for data in processes.gather(_encode(found, failed))]
  found = {k: v for part, _ in gathered for k, v in part.items()}
  found.update({k: v for k, v in done.items() if v is not None})   # process 0's only
  failed = sorted((f for _, part in gathered for f in part), key=lambda f: f["image_id"])
  results = [entry for image_id in sorted(found)
             for entry in coco_results.person_results(image_id, *found[image_id][:2])]
  stats = coco_results.evaluate_keypoints(source.ground_truth, results, source.image_ids,
                                          verbose) if main else {}
  stats = json.loads(processes.share(json.dumps(stats).encode()))
  return Evaluation(results, stats, [found[image_id][2] for image_id in sorted(found)], failed,
                    len(done))


def _resume(out_dir, settings: dict, overwrite: bool, processes: Processes) -> dict:
  """The images done by earlier runs in `out_dir`: {image_id: Found} on process 0, {image_id:
  None} on the others. Process 0 checks the settings (`result_log.start`) and every process
  raises its UserError."""
  if out_dir is None:
    return {}
  done, error = {}, None
  if processes.index == 0:
    try:
      pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
      result_log.start(out_dir, settings, overwrite, OUTPUTS)
      for path in sorted((pathlib.Path(out_dir) / PARTIAL_DIR).glob("process-*.jsonl")):
        done.update(_found(record) for record in result_log.read_records(path))
    except UserError as caught:
      error = str(caught)
  shared = json.loads(processes.share(json.dumps({"error": error, "ids": sorted(done)}).encode()))
  if shared["error"]:
    raise UserError(shared["error"])
  return done or dict.fromkeys(shared["ids"])


def _record(image_id: int, found: Found) -> dict:
  """One line of a partial file: an image's people (x, y, value), scores and seconds."""
  people, scores, seconds = found
  return {"image_id": image_id, "people": people[..., :3].tolist(), "scores": scores.tolist(),
          "seconds": seconds}


def _found(record: dict) -> tuple[int, Found]:
  """The inverse of `_record` (exact: the float32 values travel as their float64 decimals)."""
  people = np.asarray(record["people"], np.float32).reshape(len(record["people"]), -1, 3)
  return int(record["image_id"]), (people, np.asarray(record["scores"], np.float32),
                                   record["seconds"])


def _estimate(estimator: PoseEstimator, images: Iterable[tuple[int, np.ndarray | UnreadableInput]],
              bar: tqdm.tqdm) -> Iterator[tuple[int, Found | UnreadableInput]]:
  """(image_id, (people, scores, seconds)) for every image, or (image_id, UnreadableInput) for one
  that could not be read: images wait, by network input size, until `estimator.batch_size` of
  them can run together; the rest run at the end."""
  waiting: dict[tuple, list[tuple[int, np.ndarray]]] = {}

  def run(batch):
    with compiling_notice(bar, estimator, batch[0][1].shape[:2], len(batch)):
      poses = estimator([image for _, image in batch])
    bar.update(len(batch))
    return [(image_id, (p.people, p.scores, p.seconds)) for (image_id, _), p in zip(batch, poses)]

  for image_id, image in images:
    if isinstance(image, UnreadableInput):
      bar.update(1)
      yield image_id, image
      continue
    size = estimator.input_sizes(image.shape[:2])
    waiting.setdefault(size, []).append((image_id, image))
    if len(waiting[size]) == estimator.batch_size:
      yield from run(waiting.pop(size))
  for batch in waiting.values():
    yield from run(batch)


def _encode(found: dict[int, Found], failed: list[dict]) -> bytes:
  """People, scores and seconds by image id, and the failed images -> bytes (NPZ; dtypes kept,
  so decoding is exact)."""
  ids = sorted(found)
  people = [found[i][0][..., :3] for i in ids]   # x, y, value: what the results hold
  arrays = {"ids": np.asarray(ids, np.int64),
            "counts": np.asarray([len(p) for p in people], np.int64),
            "people": np.concatenate(people) if ids else np.zeros((0, 0, 3), np.float32),
            "scores": np.concatenate([found[i][1] for i in ids]) if ids else np.zeros(0),
            "seconds": np.asarray([[found[i][2][part] for part in PARTS] for i in ids],
                                  np.float64).reshape(-1, len(PARTS)),
            "failed": np.frombuffer(json.dumps(failed).encode(), np.uint8)}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _decode(data: bytes) -> tuple[dict[int, Found], list[dict]]:
  """The inverse of `_encode`."""
  arrays = np.load(io.BytesIO(data), allow_pickle=False)
  ends = np.cumsum(arrays["counts"])
  return {int(image_id): (people, scores, dict(zip(PARTS, map(float, seconds))))
          for image_id, people, scores, seconds in zip(
              arrays["ids"], np.split(arrays["people"], ends[:-1]),
              np.split(arrays["scores"], ends[:-1]), arrays["seconds"])
          }, json.loads(arrays["failed"].tobytes())


def timing_summary(seconds: list[dict]) -> dict[str, dict[str, float]]:
  """Mean and median milliseconds per image for each part and in total.

  The median is the steady-state figure: the first batch of every input size includes
  compilation, which the mean keeps. Images that ran as one batch share its network and decode
  time equally (the batch's seconds / its number of images, padding excluded).
  """
  summary = {}
  for part in (*PARTS, "total"):
    values = [1e3 * (sum(s.values()) if part == "total" else s[part]) for s in seconds]
    summary[part] = {"mean_ms": statistics.fmean(values) if values else 0.0,
                     "median_ms": statistics.median(values) if values else 0.0}
  return summary


def write_outputs(out_dir, evaluation: Evaluation, settings: dict) -> pathlib.Path:
  """`results.json` (COCO results) and `metrics.json` (stats by name, the images scored and
  failed, `timing_summary`, settings)."""
  out_dir = pathlib.Path(out_dir)
  coco_results.write_results(out_dir / "results.json", evaluation.results)
  metrics = {**evaluation.stats, "num_images": len(evaluation.seconds),
             "num_people": len(evaluation.results), "num_failed": len(evaluation.failed),
             "failed_images": evaluation.failed,
             "ms_per_image": timing_summary(evaluation.seconds), "settings": settings}
  atomic.write_atomically(out_dir / "metrics.json",
                                     json.dumps(metrics, indent=2) + "\n")
  return out_dir / "metrics.json"
