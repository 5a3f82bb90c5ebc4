"""`ehrnet evaluate` end to end on coco-mini with the fixture-converted H-4 weights (random)."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from ehrnet_jax import cli, inference
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import coco_evaluation, grouping, jax_decoder, transforms

# Two coco-mini images of the same size (one network compilation): 640x427 -> 576x384.
IMAGE_IDS = (183872, 211325)


@pytest.fixture(scope="module")
def checkpoint(reference_dir, tmp_path_factory):
  directory = tmp_path_factory.mktemp("ckpt") / "H-4"
  assert cli.main(["convert", str(reference_dir / "H-4_state_dict.npz"), "--variant", "H-4",
                   "--out", str(directory)]) == 0
  return directory


@pytest.fixture(scope="module")
def mini_split(coco_mini_dir, tmp_path_factory):
  """A COCO folder with just IMAGE_IDS, so that the CLI runs on exactly those images."""
  root = tmp_path_factory.mktemp("coco")
  annotations = json.loads(
      (coco_mini_dir / "annotations" / "person_keypoints_train2017.json").read_text())
  annotations["images"] = [i for i in annotations["images"] if i["id"] in IMAGE_IDS]
  annotations["annotations"] = [a for a in annotations["annotations"]
                                if a["image_id"] in IMAGE_IDS]
  (root / "annotations").mkdir()
  (root / "annotations" / "person_keypoints_mini.json").write_text(json.dumps(annotations))
  (root / "mini").symlink_to(coco_mini_dir / "train2017")
  return root


@pytest.mark.slow
def test_evaluate_command_writes_results_and_metrics(checkpoint, mini_split, tmp_path, capsys):
  out = tmp_path / "eval"
  assert cli.main(["evaluate", "--variant", "H-4", "--checkpoint", str(checkpoint),
                   "--coco-dir", str(mini_split), "--split", "mini", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "network" in printed and "grouping" in printed
  metrics = json.loads((out / "metrics.json").read_text())
  results = json.loads((out / "results.json").read_text())
  assert metrics["num_images"] == 2 and metrics["num_people"] == len(results) > 0
  assert set(metrics["ms_per_image"]) == {"network", "decode", "grouping", "total"}
  # The metrics are pycocotools' on the written results.
  ground_truth = COCO(str(mini_split / "annotations" / "person_keypoints_mini.json"))
  from ehrnet_jax.inference import coco_results  # pylint: disable=import-outside-toplevel
  expected = coco_results.evaluate_keypoints(ground_truth, results)
  assert {k: metrics[k] for k in coco_results.STAT_NAMES} == expected
  assert {r["image_id"] for r in results} <= set(IMAGE_IDS)
  for entry in results[:50]:
    assert len(entry["keypoints"]) == 51 and entry["category_id"] == 1
    xs = entry["keypoints"][0::3]
    assert entry["bbox"][0] == pytest.approx(min(xs)) and entry["bbox"][2] >= 0


@pytest.mark.slow
def test_device_candidates_give_the_same_people_as_host_grouping(checkpoint, coco_mini_dir):
  """The JAX path (NMS/top-k on device) equals grouping the same maps entirely on the host."""
  estimator = jax_decoder.jax_estimator(checkpoint, "H-4")
  image = inference.read_image(coco_mini_dir / "train2017" / "000000183872.jpg")
  poses = estimator([image])[0]
  size = transforms.multi_scale_size(image.shape[1::-1], 384, 1.0, 1.0)
  maps = estimator.decoder([(1.0, transforms.warp_image(image, size)[None])], size.size_wh[::-1])
  people, scores = grouping.parse(maps.heatmaps[0], maps.tags[0])
  assert len(people) > 0
  np.testing.assert_array_equal(scores, poses.scores)
  np.testing.assert_allclose(transforms.map_to_image(people, size.center, size.scale,
                                                     size.size_wh), poses.people, atol=1e-4)


def test_checkpoint_of_another_variant_is_a_clear_error(checkpoint, mini_split, tmp_path, capsys):
  assert cli.main(["evaluate", "--variant", "H-2", "--checkpoint", str(checkpoint),
                   "--coco-dir", str(mini_split), "--split", "mini", "--out", str(tmp_path)]) == 2
  error = capsys.readouterr().err
  assert str(checkpoint) in error and "H-4" in error and "H-2" in error


def test_missing_split_names_the_annotation_file(tmp_path):
  with pytest.raises(UserError, match="person_keypoints_val2017.json"):
    coco_evaluation.coco_folder(tmp_path, "val2017")


@pytest.mark.parametrize("scales, message", [("0.5,1.5", "must include 1"),
                                             ("0.6,1", "multiple of 32"), ("a,b", "numbers")])
def test_bad_scales_are_user_errors(scales, message):
  from ehrnet_jax.commands._runtime import parse_scales  # pylint: disable=import-outside-toplevel
  with pytest.raises(UserError, match=message):
    transforms.pyramid_sizes((640, 480), 384, parse_scales(scales))
