"""The ImageNet train recipe on real JPEGs (inception crop with window decode, flip,
RandAugment, MixUp/CutMix): both RandAugment implementations give the same stream, the flip
done per image right after the crop is the batch's flip draw, and a resumed stream is exact.
"""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax import data
from nfnets_jax.data import pipeline
from nfnets_jax.data import preprocessing
from nfnets_jax.errors import ConfigError

SIZE, PER_DEVICE, DEVICES = 24, 4, 2
BATCH = PER_DEVICE * DEVICES


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("jpegs"))
  rng = np.random.RandomState(0)
  for i in range(20):
    d = os.path.join(root, "train", f"c{i % 4}")
    os.makedirs(d, exist_ok=True)
    h, w = rng.randint(30, 61, size=2)
    image = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
    tf.io.write_file(os.path.join(d, f"{i}.jpg"), tf.io.encode_jpeg(image, quality=90))
  return root


def recipe(root, **augment):
  aug = dict(flip=True, pad=0, randaugment_layers=4, randaugment_magnitude=5, mixup_alpha=0.2,
             cutmix=True)
  aug.update(augment)
  return ml_collections.ConfigDict(dict(
      seed=3, dataset="folder", data_dir=root, train_split="train", train_image_size=SIZE,
      train_preproc="inception_crop", normalization="imagenet",
      augment=ml_collections.ConfigDict(aug), shuffle_buffer=64))


def batches(config, n, start_step=0):
  it = data.train_iterator(config, per_device_batch=PER_DEVICE, num_devices=DEVICES,
                           start_step=start_step)
  return [next(it) for _ in range(n)]


def test_batch_randaugment_equals_per_example_and_resumes(jpegs):
  per_example = batches(recipe(jpegs, randaugment_layers=2, randaugment_impl="per_example"), 4)
  batched = batches(recipe(jpegs, randaugment_layers=2, randaugment_impl="batch"), 4)
  for a, b in zip(per_example, batched):
    np.testing.assert_allclose(a["images"], b["images"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a["labels"], b["labels"])
  assert not np.allclose(per_example[0]["images"], per_example[1]["images"])
  resumed = batches(recipe(jpegs, randaugment_layers=2), 2, start_step=2)  # default impl
  for want, got in zip(per_example[2:], resumed):
    np.testing.assert_allclose(got["images"], want["images"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["labels"], want["labels"])
  with pytest.raises(ConfigError, match="randaugment_impl"):
    batches(recipe(jpegs, randaugment_impl="gpu"), 1)


def test_flip_after_crop_is_the_batch_flip_draw(jpegs):
  off = dict(randaugment_layers=0, mixup_alpha=0.0, cutmix=False)
  plain = batches(recipe(jpegs, flip=False, **off), 3)
  flipped = batches(recipe(jpegs, flip=True, **off), 3)
  count = 0
  for step, (a, b) in enumerate(zip(plain, flipped)):
    a = a["images"].reshape(BATCH, SIZE, SIZE, 3)
    b = b["images"].reshape(BATCH, SIZE, SIZE, 3)
    draws = preprocessing.flip_draws(pipeline.train_batch_keys(3, 0, step)[1], BATCH).numpy()
    np.testing.assert_array_equal(b, np.where(draws[:, None, None, None], a[:, :, ::-1], a))
    count += draws.sum()
  assert 0 < count < 3 * BATCH
