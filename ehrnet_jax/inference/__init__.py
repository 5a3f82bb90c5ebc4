"""Image -> people: the bottom-up pose pipeline after the network.

The backend-neutral core (NumPy, OpenCV; no JAX, no onnxruntime):
  estimator        `PoseEstimator` (warp to the test scales, decode, group, map back), the
                   `Decoder` protocol
  inputs           input files: listed, checked from their headers, read
  host_decoder     `HostDecoder`: a `Decoder` around any backend returning NumPy maps
  transforms       test sizes, the image warp and the mapping back to the image
  aggregation      flip test, upsampling and the mean over scales (NumPy or jax.numpy)
  grouping         candidates, associative-embedding matching, adjust and refine
  assignment       minimum-cost assignment with the reference's (munkres 3.0.0's) tie rule
  coco_results     people -> COCO result entries, pycocotools scoring
  coco_evaluation  a `PoseEstimator` over a COCO split (imports pycocotools when run)
  predict          images and videos -> JSON (streamed, resumable) and drawings
  stream           a video file, camera or URL through the estimator and a tracker, pipelined
  track_outputs    what `ehrnet track` writes: tracks.jsonl, tracked.mp4, summary.json
  result_log       results streamed to JSON lines, resumed, with the run's settings
  progress         progress bars that say when they compile, one-line warnings
  drawing          skeletons, masks and heatmaps drawn on images
The backends, each imported only by whoever chooses it:
  jax_decoder      network and decoding on device (JAX); `jax_estimator(checkpoint)`
  onnx_decoder     an exported ONNX model in onnxruntime; `onnx_estimator(model.onnx)`

Importing this package gives the core's small public surface below; it never imports a backend.
"""

from ehrnet_jax.inference.estimator import PoseEstimator, Poses
from ehrnet_jax.inference.host_decoder import HostDecoder
from ehrnet_jax.inference.inputs import read_image

__all__ = ["HostDecoder", "PoseEstimator", "Poses", "read_image"]
