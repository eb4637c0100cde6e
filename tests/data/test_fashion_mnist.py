"""The offline Fashion-MNIST TFDS build from Debian's dataset-fashion-mnist files."""
import gzip
import os
import struct

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from nfnets_jax import data
from nfnets_jax.data import fashion_mnist as fm
from nfnets_jax.data import preprocessing

needs_files = pytest.mark.skipif(
    bool(fm.missing_files()), reason="dataset-fashion-mnist not installed (apt-get install "
    "dataset-fashion-mnist)")


def write_idx(path, array, dtype_code=0x08):
  header = bytes([0, 0, dtype_code, array.ndim]) + struct.pack(">" + "I" * array.ndim,
                                                               *array.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def test_read_idx_round_trip_and_errors(tmp_path):
  arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  for name in ("a.gz", "a.raw"):
    write_idx(str(tmp_path / name), arr)
    out = fm.read_idx(str(tmp_path / name))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)
  (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="not an idx file"):
    fm.read_idx(str(tmp_path / "bad"))
  (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
  with pytest.raises(ValueError, match="header says"):
    fm.read_idx(str(tmp_path / "short"))


@needs_files
def test_idx_files_decode_to_the_published_counts():
  train_images, labels = fm.load_split("train")
  assert train_images.shape == (60000, 28, 28) and labels.shape == (60000,)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [6000] * 10)
  images, labels = fm.load_split("test")
  assert images.shape == (10000, 28, 28)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [1000] * 10)
  # The normalization table was computed from these very files.
  pixels = train_images.astype(np.float64)
  np.testing.assert_allclose([pixels.mean(), pixels.std()],
                             [v[0] for v in preprocessing.NORMALIZATION["fashion_mnist"]],
                             rtol=1e-9)


def test_missing_source_files_say_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="sudo apt-get install dataset-fashion-mnist"):
    fm.ensure_source_files(str(tmp_path))


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
  if fm.missing_files():
    pytest.skip("dataset-fashion-mnist not installed")
  d = str(tmp_path_factory.mktemp("fm_small"))
  builder = fm.make_builder_class(fm.DEFAULT_SOURCE_DIR)(data_dir=d)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, max_examples_per_split=64))
  return d


def test_small_build_is_a_real_tfds_dataset_with_idx_contents(small_build):
  builder = tfds.builder("fashion_mnist", data_dir=small_build)  # TFDS's registered class
  assert builder.is_prepared() and str(builder.version) == "3.0.1"
  assert builder.info.features["label"].names[0] == "T-shirt/top"
  for split in ("train", "test"):
    ds = tfds.load("fashion_mnist", split=split, data_dir=small_build, batch_size=-1)
    ds = tfds.as_numpy(ds)
    assert ds["image"].shape == (64, 28, 28, 1) and ds["image"].dtype == np.uint8
    src_images, src_labels = fm.load_split(split)
    want = sorted((im.tobytes(), int(l)) for im, l in zip(src_images[:64], src_labels[:64]))
    got = sorted((im[..., 0].tobytes(), int(l)) for im, l in zip(ds["image"], ds["label"]))
    assert got == want


def test_demo_pipeline_on_fashion_mnist(small_build):
  config = ml_collections.ConfigDict(dict(
      seed=0, dataset="fashion_mnist", data_dir=small_build, train_split="train",
      eval_split="test", train_image_size=28, eval_image_size=28, train_preproc="pad_crop",
      eval_preproc="none", eval_crop_pct=0.875, normalization="dataset", shuffle_buffer=1024,
      augment=dict(flip=True, pad=4, randaugment_layers=0, randaugment_magnitude=5,
                   mixup_alpha=0.0, cutmix=False)))
  info = data.get_dataset_info(config)
  assert info == data.DatasetInfo(10, 64, 64, (28, 28, 1))
  lo, hi = (0 - 72.94035223214286) / 90.02118235130526, (255 - 72.94035223214286) / 90.02118235130526
  b = next(data.train_iterator(config, per_device_batch=8, num_devices=2))
  assert b["images"].shape == (2, 8, 28, 28, 1) and b["labels"].shape == (2, 8, 10)
  assert b["images"].min() >= lo - 1e-5 and b["images"].max() <= hi + 1e-5
  np.testing.assert_array_equal(b["labels"].sum(-1), 1.0)
  batches = list(data.eval_iterator(config, per_device_batch=5, num_devices=3))
  assert len(batches) == 5 and sum(x["mask"].sum() for x in batches) == 64
  src_images, src_labels = fm.load_split("test")
  got = sorted(int(l) for x in batches for l in x["labels"][x["mask"] > 0])
  assert got == sorted(src_labels[:64].tolist())


@pytest.mark.slow
@needs_files
def test_full_build_counts_labels_and_idempotence(tmp_path):
  d = str(tmp_path)
  logs = []
  fm.prepare(d, log=logs.append)
  counts = fm.verify(d, log=logs.append)  # (image, label) pairs equal the idx files
  np.testing.assert_array_equal(counts["train"], [6000] * 10)
  np.testing.assert_array_equal(counts["test"], [1000] * 10)
  builder = tfds.builder("fashion_mnist", data_dir=d)
  assert builder.info.splits["train"].num_examples == 60000
  assert builder.info.splits["test"].num_examples == 10000
  fm.prepare(d, log=logs.append)
  assert "skipping" in logs[-1]
  assert os.path.isdir(os.path.join(d, "fashion_mnist", "3.0.1"))
