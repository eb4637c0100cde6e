"""ImageNet (imagenet2012) pipelines under tfds.testing.mock_data: shapes, dtypes, ranges, layout."""
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from nfnets_jax import data


def imagenet_config():
  return ml_collections.ConfigDict(dict(
      seed=0, dataset="imagenet2012", data_dir=None, train_split="train",
      eval_split="validation", train_image_size=32, eval_image_size=24,
      train_preproc="inception_crop", eval_preproc="resize_crop_32", eval_crop_pct=0.875,
      normalization="imagenet", shuffle_buffer=64,
      augment=dict(flip=True, pad=0, randaugment_layers=2, randaugment_magnitude=10,
                   mixup_alpha=0.2, cutmix=True)))


def test_imagenet_mock_train_and_eval_layout():
  config = imagenet_config()
  lo = (0 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
  hi = (255 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
  with tfds.testing.mock_data(num_examples=10):
    info = data.get_dataset_info(config)
    assert info.num_classes == 1000 and info.image_shape == (32, 32, 3)
    it = data.train_iterator(config, per_device_batch=2, num_devices=2)
    for _ in range(3):
      b = next(it)
      assert b["images"].shape == (2, 2, 32, 32, 3) and b["images"].dtype == np.float32
      assert b["labels"].shape == (2, 2, 1000) and b["labels"].dtype == np.float32
      assert np.all(b["images"] >= lo - 1e-4) and np.all(b["images"] <= hi + 1e-4)
      assert b["images"].std() > 0.05
      np.testing.assert_allclose(b["labels"].sum(-1), 1.0, atol=1e-5)
      assert b["labels"].min() >= 0
    config.train_preproc = "none"
    config.augment.randaugment_layers = 0
    b = next(data.train_iterator(config, per_device_batch=2, num_devices=2))
    assert b["images"].shape == (2, 2, 32, 32, 3)
    total = 0
    batches = list(data.eval_iterator(config, per_device_batch=3, num_devices=2))
    for b in batches:
      assert b["images"].shape == (2, 3, 24, 24, 3) and b["images"].dtype == np.float32
      assert b["labels"].dtype == np.int32 and np.all((b["labels"] >= 0) & (b["labels"] < 1000))
      valid = b["images"][b["mask"] > 0]  # bicubic (no clipping in eval) may overshoot a bit
      assert np.all(valid >= lo - 1.0) and np.all(valid <= hi + 1.0) and valid.std() > 0.05
      total += b["mask"].sum()
    assert total == 10 and len(batches) == 2
    config.eval_preproc = "crop_resize"
    b = next(data.eval_iterator(config, per_device_batch=3, num_devices=2))
    assert b["images"].shape == (2, 3, 24, 24, 3)


def test_fashion_mnist_mock_uses_in_memory_path():
  config = ml_collections.ConfigDict(dict(
      seed=0, dataset="fashion_mnist", data_dir=None, train_split="train", eval_split="test",
      train_image_size=28, eval_image_size=28, train_preproc="pad_crop", eval_preproc="none",
      eval_crop_pct=0.875, normalization="dataset", shuffle_buffer=64,
      augment=dict(flip=True, pad=4, randaugment_layers=0, randaugment_magnitude=5,
                   mixup_alpha=0.0, cutmix=False)))
  with tfds.testing.mock_data(num_examples=12):
    info = data.get_dataset_info(config)
    assert info == data.DatasetInfo(10, 12, 12, (28, 28, 1))
    b = next(data.train_iterator(config, per_device_batch=4, num_devices=2))
    assert b["images"].shape == (2, 4, 28, 28, 1) and b["labels"].shape == (2, 4, 10)
    batches = list(data.eval_iterator(config, per_device_batch=5, num_devices=1))
    assert [x["mask"].sum() for x in batches] == [5, 5, 2]
    assert batches[0]["images"].shape == (1, 5, 28, 28, 1)
