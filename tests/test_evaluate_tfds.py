"""Issue #5: `ehrnet evaluate --data-dir` (the TFDS dataset of `ehrnet data`, read through the
data source) scores the same images with the same ground truth as `--coco-dir` on the folder it
was built from."""

import functools
import json

import numpy as np
import pytest

from support import data_testing
from ehrnet_jax import cli, samples, weights
from ehrnet_jax.inference import coco_evaluation, coco_results, jax_decoder
from ehrnet_jax.scaling import ScalingSpec


@pytest.fixture(scope="module")
def sample_coco(tmp_path_factory):
  """The bundled COCO folder with val2017 = train2017 (symlinks)."""
  return data_testing.coco_mini_with_val(samples.coco_dir(), tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def sample_tfds(sample_coco, tmp_path_factory):
  from ehrnet_jax.data import coco_tfds  # pylint: disable=import-outside-toplevel
  data_dir = tmp_path_factory.mktemp("tfds")
  coco_tfds.build(sample_coco, data_dir)
  return data_dir


def _by_image(ground_truth):
  """{image id: (height, width, the fields COCOeval reads of each annotation, in order)}."""
  fields = ("id", "category_id", "iscrowd", "num_keypoints", "keypoints", "bbox", "area")
  return {image_id: (image["height"], image["width"],
                     [[ann[f] for f in fields] for ann in ground_truth.imgToAnns[image_id]])
          for image_id, image in ground_truth.imgs.items()}


def test_same_images_in_the_same_order_with_max_images(sample_coco, sample_tfds):
  for max_images in (None, 3):
    folder = coco_evaluation.coco_folder(sample_coco, "val2017", max_images)
    tfds = coco_evaluation.tfds_dataset(sample_tfds, "val2017", max_images)
    assert tfds.image_ids == folder.image_ids == sorted(folder.ground_truth.imgs)[:max_images]
    assert sorted(tfds.ground_truth.imgs) == tfds.image_ids


def test_images_by_id_are_the_files_pixels_in_the_order_asked(sample_coco, sample_tfds):
  folder = coco_evaluation.coco_folder(sample_coco, "val2017")
  tfds = coco_evaluation.tfds_dataset(sample_tfds, "val2017")
  ids = [tfds.image_ids[-1], tfds.image_ids[0], tfds.image_ids[-1]]
  got, expected = list(tfds.images(ids)), list(folder.images(ids))
  assert [i for i, _ in got] == [i for i, _ in expected] == ids
  for (_, image), (_, truth) in zip(got, expected):
    np.testing.assert_array_equal(image, truth)  # The same decoder on the same bytes.


def test_ground_truth_is_the_json_annotations_crowds_included(sample_coco, sample_tfds):
  folder = coco_evaluation.coco_folder(sample_coco, "val2017").ground_truth
  tfds = coco_evaluation.tfds_dataset(sample_tfds, "val2017").ground_truth
  assert _by_image(tfds) == _by_image(folder)  # Exact: float64 boxes and areas, json order.
  assert sum(a["iscrowd"] and not a["num_keypoints"] for a in tfds.dataset["annotations"]) == 3


def test_a_detection_on_a_crowd_is_ignored_with_both_sources(sample_coco, sample_tfds):
  """Image 433998: its people with keypoints found exactly, plus one detection on its crowd
  region scored above them. pycocotools ignores a detection matched to a crowd: AP 1 (without the
  crowd in the ground truth it is a false positive ranked first: AP 0.75)."""
  image_id = 433998
  folder = coco_evaluation.coco_folder(sample_coco, "val2017").ground_truth
  anns = folder.imgToAnns[image_id]
  people = np.asarray([a["keypoints"] for a in anns if a["num_keypoints"]]).reshape(-1, 17, 3)
  x, y, w, h = next(a["bbox"] for a in anns if a["iscrowd"])
  on_crowd = np.tile([x + w / 2, y + h / 2, 1.0], (1, 17, 1))
  results = coco_results.person_results(image_id, np.concatenate([on_crowd, people]),
                                        np.linspace(1.0, 0.5, len(people) + 1))
  tfds = coco_evaluation.tfds_dataset(sample_tfds, "val2017").ground_truth
  stats = [coco_results.evaluate_keypoints(gt, results, [image_id]) for gt in (folder, tfds)]
  assert stats[0] == stats[1] and stats[0]["AP"] == stats[0]["AR"] == 1.0


@pytest.mark.slow
def test_evaluate_data_dir_gives_the_coco_dir_results(sample_coco, sample_tfds, h4_variables,
                                                      tmp_path, monkeypatch):
  """The bundled H-4 weights on the first image by id (no crowd region), both sources."""
  # Both runs share one estimator (the network compiles once); the sources differ.
  monkeypatch.setattr(jax_decoder, "jax_estimator", functools.cache(jax_decoder.jax_estimator))
  checkpoint = weights.save_variables(tmp_path / "H-4", h4_variables,
                                          ScalingSpec.from_name("H-4"))
  outputs = {}
  for name, source in (("coco", ["--coco-dir", str(sample_coco)]),
                       ("tfds", ["--data-dir", str(sample_tfds)])):
    assert cli.main(["evaluate", "--variant", "H-4", "--checkpoint", str(checkpoint), *source,
                     "--split", "val2017", "--max-images", "1", "--no-flip",
                     "--out", str(tmp_path / name)]) == 0
    outputs[name] = [json.loads((tmp_path / name / f).read_text())
                     for f in ("metrics.json", "results.json")]
  (coco_metrics, coco_results), (tfds_metrics, tfds_results) = outputs["coco"], outputs["tfds"]
  assert tfds_results == coco_results and {r["image_id"] for r in coco_results} == {790}
  for metrics in (coco_metrics, tfds_metrics):
    del metrics["ms_per_image"], metrics["settings"]
  assert tfds_metrics == coco_metrics and coco_metrics["num_images"] == 1
