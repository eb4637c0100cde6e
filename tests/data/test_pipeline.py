"""Train/eval pipelines: layout, sharding over processes, exact-once eval, determinism, resume.

A tiny real TFDS dataset (built into a tmp dir) whose every pixel equals the example id lets
us see exactly which examples each process and batch received; ImageNet runs under
``tfds.testing.mock_data``.
"""
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from nfnets_jax import data
from nfnets_jax.data import pipeline

N_TRAIN, N_TEST, K = 37, 23, 5


class NfnetsToyImages(tfds.core.GeneratorBasedBuilder):
  """8 x 8 x 1 images whose pixels all equal the example id; label = id % 5."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(num_classes=K)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, N_TRAIN),
            "test": self._generate_examples(100, N_TEST)}

  def _generate_examples(self, first, n):
    for i in range(first, first + n):
      yield i, {"image": np.full((8, 8, 1), i, np.uint8), "label": i % K}


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  NfnetsToyImages(data_dir=d).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return d


def toy_config(data_dir, **augment):
  aug = dict(flip=False, pad=0, randaugment_layers=0, randaugment_magnitude=5,
             mixup_alpha=0.0, cutmix=False)
  aug.update(augment)
  return ml_collections.ConfigDict(dict(
      seed=0, dataset="nfnets_toy_images", data_dir=data_dir, train_split="train",
      eval_split="test", train_image_size=8, eval_image_size=8, train_preproc="none",
      eval_preproc="none", eval_crop_pct=0.875, normalization="none", augment=aug,
      shuffle_buffer=16))


@pytest.fixture(params=["in_memory", "streaming"])
def mode(request, monkeypatch):
  if request.param == "streaming":
    monkeypatch.setattr(pipeline, "IN_MEMORY_MAX_BYTES", 0)
  return request.param


def file_order(data_dir, split):
  """Example ids in TFDS's stored order (TFDS shuffles examples when writing)."""
  ds = tfds.load("nfnets_toy_images", split=split, data_dir=data_dir)
  return [int(ex["image"][0, 0, 0]) for ex in tfds.as_numpy(ds)]


def ids(images):
  return np.rint(images[..., 0, 0, 0]).astype(int)


def train_ids(config, n_batches, **kw):
  it = data.train_iterator(config, **kw)
  return np.concatenate([ids(next(it)["images"]).reshape(-1) for _ in range(n_batches)])


def test_shard_bounds_disjoint_and_cover():
  for n in (0, 1, 7, 37, 50000):
    for p in (1, 2, 3, 8):
      bounds = [data.shard_bounds(n, i, p) for i in range(p)]
      assert bounds[0][0] == 0 and bounds[-1][1] == n
      assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
      assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1
  with pytest.raises(ValueError, match="process_index"):
    data.shard_bounds(10, 3, 3)


def test_dataset_info(toy_dir):
  config = toy_config(toy_dir)
  info = data.get_dataset_info(config)
  assert info == data.DatasetInfo(K, N_TRAIN, N_TEST, (8, 8, 1))
  config.train_split = "train[10:]"
  assert data.get_dataset_info(config).num_train_examples == N_TRAIN - 10


@pytest.mark.parametrize("process_count", [1, 2, 3, 5])
def test_eval_counts_every_example_once(toy_dir, mode, process_count):
  config = toy_config(toy_dir)
  seen, n_batches = [], set()
  for p in range(process_count):
    batches = list(data.eval_iterator(config, per_device_batch=3, num_devices=2,
                                      process_index=p, process_count=process_count))
    n_batches.add(len(batches))
    for b in batches:
      assert b["images"].shape == (2, 3, 8, 8, 1) and b["images"].dtype == np.float32
      assert b["labels"].shape == (2, 3) and b["labels"].dtype == np.int32
      assert b["mask"].shape == (2, 3)
      m = b["mask"] > 0
      seen.extend(ids(b["images"])[m].tolist())
      np.testing.assert_array_equal(b["labels"][m], ids(b["images"])[m] % K)
      assert np.all(b["images"][~m] == 0)
  assert len(n_batches) == 1  # every process yields the same number of batches
  assert sorted(seen) == list(range(100, 100 + N_TEST))  # exactly once, N = 23 not % 6


def test_eval_sliced_split_and_default_devices(toy_dir):
  config = toy_config(toy_dir)
  seen = []
  for p in range(2):
    for b in data.eval_iterator(config, per_device_batch=2, split="train[5:30]",
                                process_index=p, process_count=2):
      assert b["images"].shape[:2] == (jax.local_device_count(), 2)
      seen.extend(ids(b["images"])[b["mask"] > 0].tolist())
  assert sorted(seen) == sorted(file_order(toy_dir, "train")[5:30])
  assert len(set(file_order(toy_dir, "train")[5:30])) == 25


def test_train_shards_disjoint_and_cover(toy_dir, mode):
  config = toy_config(toy_dir)
  order = file_order(toy_dir, "train")
  shards = []
  for p in range(3):
    start, end = data.shard_bounds(N_TRAIN, p, 3)
    got = train_ids(config, 4, per_device_batch=2, num_devices=2, process_index=p,
                    process_count=3)
    shards.append(sorted(got[:end - start].tolist()))  # one epoch is a permutation of the shard
    assert shards[-1] == sorted(order[start:end])  # this process's contiguous shard
  assert sorted(sum(shards, [])) == list(range(N_TRAIN))


def test_train_uses_jax_process_index(toy_dir, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  got = train_ids(toy_config(toy_dir), 5, per_device_batch=2, num_devices=2)
  start, end = data.shard_bounds(N_TRAIN, 1, 2)
  assert sorted(got[:end - start].tolist()) == sorted(file_order(toy_dir, "train")[start:end])


def test_train_batch_layout_and_one_hot(toy_dir):
  b = next(data.train_iterator(toy_config(toy_dir), per_device_batch=3, num_devices=2))
  assert b["images"].shape == (2, 3, 8, 8, 1) and b["images"].dtype == np.float32
  assert b["labels"].shape == (2, 3, K) and b["labels"].dtype == np.float32
  np.testing.assert_array_equal(b["labels"].argmax(-1), ids(b["images"]) % K)
  np.testing.assert_array_equal(b["labels"].sum(-1), 1.0)


def test_same_seed_same_order_other_seed_other_order(toy_dir, mode):
  config = toy_config(toy_dir)
  kw = dict(per_device_batch=4, num_devices=1)
  a = train_ids(config, 20, **kw)
  np.testing.assert_array_equal(a, train_ids(config, 20, **kw))
  assert not np.array_equal(a, train_ids(config, 20, seed=1, **kw))
  # Epochs are reshuffled: epoch 2 is a different permutation of the same examples.
  assert sorted(a[:N_TRAIN]) == sorted(a[N_TRAIN:2 * N_TRAIN])
  assert not np.array_equal(a[:N_TRAIN], a[N_TRAIN:2 * N_TRAIN])


def test_resume_from_start_step_equals_dropping_batches(toy_dir, mode):
  # Every random op on (RandAugment only in one mode: tracing its 16 branches is slow).
  config = toy_config(toy_dir, flip=True, pad=2, randaugment_layers=int(mode == "in_memory"),
                      mixup_alpha=0.2, cutmix=True)
  config.train_preproc = "pad_crop"
  kw = dict(per_device_batch=4, num_devices=2)
  full = data.train_iterator(config, **kw)
  full = [next(full) for _ in range(9)]
  resumed = data.train_iterator(config, start_step=5, **kw)  # 40 > 37: starts in epoch 2
  for want in full[5:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["images"], want["images"])
    np.testing.assert_array_equal(got["labels"], want["labels"])
  np.testing.assert_allclose(full[0]["labels"].sum(-1), 1.0, atol=1e-6)


def test_missing_dataset_errors(tmp_path):
  config = toy_config(str(tmp_path))
  config.dataset = "fashion_mnist"
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.get_dataset_info(config)
  assert isinstance(e.value, FileNotFoundError)
  assert str(tmp_path) in str(e.value) and "prepare_fashion_mnist.py" in str(e.value)
  config.dataset = "imagenet2012"
  with pytest.raises(data.DatasetNotFoundError, match="downloads/manual"):
    next(data.train_iterator(config, per_device_batch=1, num_devices=1))
  config.dataset = "no_such_dataset_xyz"
  with pytest.raises(ValueError, match="not a TFDS dataset"):
    data.get_dataset_info(config)


def test_list_supported_names_other_datasets():
  names = data.list_supported()
  for name in ("imagenet2012", "fashion_mnist", "cifar10", "cifar100", "imagenette"):
    assert name in names


def test_eval_numpy_fast_path_equals_tf_pipeline(toy_dir, monkeypatch):
  config = toy_config(toy_dir)
  config.normalization = "dataset"
  monkeypatch.setitem(pipeline.preprocessing.NORMALIZATION, "nfnets_toy_images",
                      ((10.0,), (4.0,)))
  kw = dict(per_device_batch=3, num_devices=2, process_index=1, process_count=2)
  fast = list(data.eval_iterator(config, **kw))
  slow = list(tfds.as_numpy(data.eval_dataset(config, **kw)))
  assert len(fast) == len(slow) == 2
  for f, s in zip(fast, slow):
    for key in ("images", "labels", "mask"):
      assert f[key].dtype == s[key].dtype and f[key].shape == s[key].shape
      np.testing.assert_allclose(f[key], s[key], atol=1e-6)
