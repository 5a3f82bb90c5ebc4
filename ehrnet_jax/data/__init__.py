"""COCO person keypoints through TensorFlow Datasets and Grain: build, augment, batch, targets.

- `annotations`: COCO json reading and checks, the people kept, the ignore mask (NumPy).
- `coco_tfds`: the TFDS builder (`build(coco_dir, data_dir)`, array_record files, images stored
  as their file bytes) and `load_builder`, which refuses older builds.
- `augment`: the reference's random affine, flip and eval resize (NumPy + OpenCV).
- `pipeline`: the Grain training pipeline over the build, a pure function of (seed, step).
- `targets`: heatmaps and tag-loss joint lists on device (JAX, jittable).
- `stats`: statistics of a built split.
- `classification`: tf.data pipelines over TFDS's imagenet2012 / cifar100 builds.

Import the submodules directly. Building (`coco_tfds.build`) and `classification` need
TensorFlow; reading a COCO build (`load_builder`, `pipeline`, `stats`) does not.
"""
