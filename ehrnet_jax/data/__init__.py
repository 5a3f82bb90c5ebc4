"""COCO person keypoints through TensorFlow Datasets: build, augment, batch, targets.

- `annotations`: COCO json reading and checks, the people kept, the ignore mask (NumPy).
- `coco_tfds`: the TFDS builder (`build(coco_dir, data_dir)`), images stored as their file bytes.
- `augment`: the reference's random affine, flip and eval resize (NumPy + OpenCV).
- `pipeline`: tf.data training and evaluation pipelines over the built dataset.
- `targets`: heatmaps and tag-loss joint lists on device (JAX, jittable).
- `stats`: statistics of a built split.

Import the submodules directly; only `pipeline`, `coco_tfds` and `stats` import TensorFlow.
"""
