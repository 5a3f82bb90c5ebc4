"""Grouping speed and parity: fixture cases, maps rendered from COCO annotations, a frame's parts.

Usage:
  python benchmarks/grouping.py [--shared ../shared] [--parts fixtures,rendered,frame]
      [--compare-with OLD_grouping.py] [--reference-parser HigherHRNet/lib/core/group.py]

- fixtures: `grouping.parse` on the maps of `fixtures/reference/grouping_cases.npz`, timed the
  way the reference parser was (1 warm-up call, then the median of `--repeats` calls per case),
  every result checked against `grouping_expected.json`; the reference's figures are those the
  fixtures' README gives for the same kind of 2-core machine.
- rendered: per coco-mini image with people (`rendered_maps`: network outputs rendered from its
  annotations, through the host aggregation with flip), at short sides 384 and 512: the median
  ms per image of the host grouping (`grouping.parse`), of the grouping reading the maps on the
  JAX device (`device_maps.DeviceMaps`, after the real JAX decoding; bytes fetched), of
  `--compare-with` (another `grouping.py`, e.g. `git show REV:ehrnet_jax/inference/grouping.py`)
  and of the authors' `HeatmapParser.parse` (`--reference-parser`: its `group.py`, with torch and
  munkres 3.0.0 importable), all on the same maps in one run; people, keypoints and scores are
  compared exactly with the host grouping's.
- frame: one frame's parts for H-4 at 384 and H0 at 512 (a coco-mini image with several people):
  the network (random weights: its time does not depend on them; JAX in the fastest inference form
  on this backend, and onnxruntime CPU on an export made here), then on that image's rendered
  outputs the decoding, the device->host copy (bytes, ms), the matching (candidates,
  match_by_tag, adjust) and refine: the JAX path as it is (maps on the device) and as it was (all
  maps copied, host grouping of `--compare-with`), and the onnxruntime path (host maps).
  "host work" is matching + refine less the time refine waits for the device.
"""

import argparse
import importlib.util
import json
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import rendered_maps  # pylint: disable=wrong-import-position

from ehrnet_jax import keypoints  # pylint: disable=wrong-import-position
from ehrnet_jax.export import network, onnx as onnx_export  # pylint: disable=wrong-import-position
from ehrnet_jax.inference import grouping, host_decoder, jax_decoder  # pylint: disable=wrong-import-position
from ehrnet_jax.inference.onnx_decoder import OnnxNetwork  # pylint: disable=wrong-import-position
from ehrnet_jax.models import EfficientHRNet, init_variables  # pylint: disable=wrong-import-position
from ehrnet_jax.scaling import ScalingSpec  # pylint: disable=wrong-import-position

REFERENCE_MEDIAN_MS = 441.0   # median over the 12 cases of the reference's per-case medians
FLIP = keypoints.COCO.flip_index


def median_ms(fn, repeats: int):
  """fn's result and the median ms of `repeats` calls after one warm-up call."""
  result = fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return result, 1e3 * statistics.median(times)


def load_module(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def reference_parser(path: pathlib.Path):
  """The authors' `HeatmapParser` with the Example Configs' TEST settings, as
  `parse(heatmaps, tags) -> (people, scores)` on NumPy maps."""
  import torch  # pylint: disable=import-outside-toplevel
  section = types.SimpleNamespace
  cfg = section(DATASET=section(NUM_JOINTS=17, MAX_NUM_PEOPLE=30, WITH_CENTER=False),
                TEST=section(DETECTION_THRESHOLD=0.1, TAG_THRESHOLD=1.0, USE_DETECTION_VAL=True,
                             IGNORE_TOO_MUCH=False, NMS_KERNEL=5, NMS_PADDING=2),
                MODEL=section(TAG_PER_JOINT=True))
  parser = load_module(path, "reference_group").HeatmapParser(cfg)

  def parse(heatmaps, tags):
    ans, scores = parser.parse(torch.from_numpy(heatmaps[None]), torch.from_numpy(tags[None]))
    people = np.asarray(ans[0], np.float32).reshape(-1, len(heatmaps), 3 + tags.shape[-1])
    return people, np.asarray(scores, np.float32)
  return parse


def same(found, want) -> bool:
  return all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(found, want))


class RenderedJaxPath:
  """The JAX decoding (flip test, aggregation, NMS, top-k) of given network outputs: a
  `JaxDecoder` whose "network" returns its variables, the outputs for [image, mirrored]."""

  def __init__(self):
    self.decoder = jax_decoder.JaxDecoder(lambda outputs, images: outputs, None, flip_index=FLIP)

  def __call__(self, outputs, size):
    """-> `Maps` with one `DeviceMaps`."""
    self.decoder.variables = tuple(jnp.asarray(o) for o in outputs)
    h, w = size.size_wh[::-1]
    return self.decoder([(1.0, np.zeros((1, h, w, 3), np.uint8))], (h, w))


def rendered_part(args, annotation_file):
  old = load_module(args.compare_with, "old_grouping") if args.compare_with else None
  reference = reference_parser(args.reference_parser) if args.reference_parser else None
  jax_path = RenderedJaxPath()
  print("\n## Rendered COCO annotations (coco-mini), ms per image, medians\n")
  print("| short side | images | people/image | host | device path | fetched KB | previous "
        "| reference | reference / host | identical (device, previous, reference) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for short_side in (384, 512):
    rows = []
    for index, (_, image_wh, people) in enumerate(rendered_maps.coco_people(annotation_file)):
      if index >= args.images:
        break
      outputs, size = rendered_maps.rendered_outputs(people, image_wh, short_side, seed=index)
      maps = host_decoder.HostDecoder(lambda _, o=outputs: o, FLIP)(
          [(1.0, np.zeros((1, *size.size_wh[::-1], 3), np.uint8))], size.size_wh[::-1])
      heatmaps, tags = maps.images[0].heatmaps, maps.images[0].tags
      want, host_ms = median_ms(lambda: grouping.parse(heatmaps, tags), args.repeats)
      device = jax_path(outputs, size).images[0]
      found, device_ms = median_ms(lambda: grouping.parse_maps(device), args.repeats)
      row = {"people": len(want[0]), "host": host_ms, "device": device_ms,
             "fetched": device.fetched_bytes / (args.repeats + 1),
             # The device made its own maps (XLA's rounding): compare with the host on those.
             "same": [same(found, grouping.parse(device.to_host().heatmaps,
                                                 device.to_host().tags))]}
      if old:
        found, row["previous"] = median_ms(lambda: old.parse(heatmaps, tags), args.repeats)
        row["same"].append(same(found, want))
      if reference:
        found, row["reference"] = median_ms(lambda: reference(heatmaps, tags), 1)
        row["same"].append(same(found, want))
      rows.append(row)
    column = lambda key: statistics.median(r[key] for r in rows) if key in rows[0] else None
    text = lambda value: "-" if value is None else f"{value:.1f}"
    ratio = (statistics.median(r["reference"] / r["host"] for r in rows)
             if reference else None)
    identical = ", ".join(f"{sum(r['same'][i] for r in rows)}/{len(rows)}"
                          for i in range(len(rows[0]["same"])))
    print(f"| {short_side} | {len(rows)} | {statistics.mean(r['people'] for r in rows):.1f} | "
          f"{text(column('host'))} | {text(column('device'))} | "
          f"{column('fetched') / 1e3:.1f} | {text(column('previous'))} | "
          f"{text(column('reference'))} | {text(ratio)}x | {identical} |")


def fixtures_part(args, reference_dir):
  expected = json.loads((reference_dir / "grouping_expected.json").read_text())["cases"]
  cases = np.load(reference_dir / "grouping_cases.npz")
  print("## Fixture cases (the authors' maps)\n")
  print("| case | people | map W×H | median ms | min ms |")
  print("|---|---|---|---|---|")
  medians = []
  for index, want in enumerate(expected):
    heatmaps, tags = cases[f"heatmaps_{index}"][0], cases[f"tags_{index}"][0]
    people, scores = grouping.parse(heatmaps, tags)   # warm-up, and the parity check
    np.testing.assert_allclose(people, np.asarray(want["parsed"]).reshape(people.shape), atol=1e-5)
    np.testing.assert_allclose(scores, want["scores"], atol=1e-5)
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      grouping.parse(heatmaps, tags)
      times.append((time.perf_counter() - start) * 1e3)
    medians.append(statistics.median(times))
    w, h = want["heatmap_size_wh"]
    print(f"| {index} | {len(people)} | {w}×{h} | {medians[-1]:.1f} | {min(times):.1f} |")
  median = statistics.median(medians)
  print(f"\nmedian of per-case medians: {median:.1f} ms "
        f"(reference {REFERENCE_MEDIAN_MS:.0f} ms: {REFERENCE_MEDIAN_MS / median:.1f}x faster); "
        f"all 12 cases equal grouping_expected.json")


def frame_part(args, annotation_file):
  """One frame's parts, JAX (now and before) and onnxruntime, H-4 at 384 and H0 at 512."""
  old = load_module(args.compare_with, "old_grouping") if args.compare_with else grouping
  frames = [(wh, p) for _, wh, p in rendered_maps.coco_people(annotation_file) if len(p) <= 10]
  image_wh, people = max(frames, key=lambda frame: len(frame[1]))
  print(f"\n## One frame, ms, medians (a coco-mini image with {len(people)} people)\n")
  print("| variant | input | path | network | decode | copied to host | copy ms | matching | "
        "refine (on device) | host work |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for variant, short_side in (("H-4", 384), ("H0", 512)):
    spec = ScalingSpec.from_name(variant)
    variables = init_variables(EfficientHRNet(spec), jax.random.key(0))
    outputs, size = rendered_maps.rendered_outputs(people, image_wh, short_side)
    w, h = size.size_wh
    image = np.zeros((1, h, w, 3), np.uint8)
    decoder = jax_decoder.network_decoder(spec, variables, FLIP)
    network_ms = 1e3 * statistics.median(decoder([(1.0, image)], (h, w)).network_s
                                         for _ in range(args.repeats + 1))
    jax_path = RenderedJaxPath()

    def jax_now(parts):
      maps = jax_path(outputs, size)
      source = maps.images[0]
      grouping.parse_maps(source, seconds=parts)
      candidates = source.candidates()
      parts.update(decode=maps.decode_s, refine_device=source.device_s,
                   copy_bytes=source.fetched_bytes + sum(
                       a.nbytes for a in (candidates.xy, candidates.values, candidates.tags)))

    def jax_before(parts):
      maps = jax_path(outputs, size)
      start = time.perf_counter()
      host = maps.images[0].to_host()
      parts.update(decode=maps.decode_s, copy=time.perf_counter() - start,
                   copy_bytes=host.heatmaps.nbytes + host.tags.nbytes)
      _grouping_parts(old, host.heatmaps, host.tags, parts)

    with tempfile.TemporaryDirectory() as tmp:
      path = pathlib.Path(tmp) / "model.onnx"
      onnx_export.save(onnx_export.export_onnx(
          spec, variables, network.ExportOptions((h, w), batch=2)), path)
      session = OnnxNetwork(path)
      onnx_ms = median_ms(lambda: session(np.zeros((2, h, w, 3), np.float32)), args.repeats)[1]
    host_path = host_decoder.HostDecoder(lambda _: outputs, FLIP)

    def onnx_now(parts):
      maps = host_path([(1.0, image)], (h, w))
      parts.update(decode=maps.decode_s, copy_bytes=0)
      grouping.parse_maps(maps.images[0], seconds=parts)

    for name, run, network_time in (("JAX (maps on device)", jax_now, network_ms),
                                    ("JAX (before: maps copied)", jax_before, network_ms),
                                    ("onnxruntime (host maps)", onnx_now, onnx_ms)):
      parts = _median_parts(run, args.repeats)
      copied = parts["copy_bytes"]
      copied = f"{copied / 1e6:.1f} MB" if copied > 1e6 else f"{copied / 1e3:.1f} KB"
      print(f"| {variant} | {w}×{h} | {name} | {network_time:.1f} | {parts['decode']:.1f} | "
            f"{copied} | {parts.get('copy', 0):.1f} | {parts['matching']:.2f} | "
            f"{parts['refine']:.2f} ({parts.get('refine_device', 0):.2f}) | "
            f"{parts['matching'] + parts['refine'] - parts.get('refine_device', 0):.2f} |")


def _median_parts(run, repeats: int) -> dict[str, float]:
  """Runs `run(parts)` 1 + `repeats` times; the median of each part of the timed calls, seconds
  as ms (`copy_bytes` as is)."""
  samples = []
  for _ in range(repeats + 1):
    parts = {}
    run(parts)
    samples.append(parts)
  return {key: statistics.median(s[key] for s in samples[1:]) * (1 if key == "copy_bytes" else 1e3)
          for key in samples[-1]}


def _grouping_parts(module, heatmaps, tags, seconds):
  """`seconds` of matching and refine of a host grouping module (this one or an older one)."""
  if module is grouping:
    grouping.parse_maps(grouping.HostMaps(heatmaps, tags), seconds=seconds)
    return
  start = time.perf_counter()
  module.parse(heatmaps, tags, config=module.GroupingConfig(refine=False))
  matched = time.perf_counter()
  module.parse(heatmaps, tags)
  total = time.perf_counter() - matched
  seconds.update(matching=matched - start, refine=total - (matched - start))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shared", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parents[2] / "shared")
  parser.add_argument("--parts", default="fixtures,rendered,frame")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--images", type=int, default=64, help="rendered coco-mini images per size")
  parser.add_argument("--compare-with", type=pathlib.Path)
  parser.add_argument("--reference-parser", type=pathlib.Path)
  args = parser.parse_args()
  print(f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}")
  annotation_file = args.shared / "data" / "coco-mini" / "annotations" / \
      "person_keypoints_train2017.json"
  parts = args.parts.split(",")
  if "fixtures" in parts:
    fixtures_part(args, args.shared / "fixtures" / "reference")
  if "rendered" in parts:
    rendered_part(args, annotation_file)
  if "frame" in parts:
    frame_part(args, annotation_file)


if __name__ == "__main__":
  main()
