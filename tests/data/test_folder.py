"""Image folders as datasets (``dataset='folder'``, data/folder.py) and TFDS datasets by name.

The folders are written here with PIL: mixed sizes, modes (L, LA, RGB, RGBA, palette) and
formats (PNG, JPEG, BMP, GIF). Every image is one uniform gray value that encodes its id, so we
can see which images each eval batch holds (uniform images survive any resize and JPEG).
"""
import os
import shutil
import warnings

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from nfnets_jax import data
from nfnets_jax.data import folder
from nfnets_jax.errors import DatasetError, DatasetNotFoundError, UserError

CLASSES = ("ant", "bee", "cat")
# (extension, PIL format, mode): cycled over the images of each folder.
MIXED = ((".png", "PNG", "RGB"), (".jpg", "JPEG", "L"), (".bmp", "BMP", "RGB"),
         (".gif", "GIF", "P"), (".png", "PNG", "RGBA"), (".png", "PNG", "LA"),
         (".jpeg", "JPEG", "RGB"), (".PNG", "PNG", "L"), (".bmp", "BMP", "L"))
GRAY = ((".png", "PNG", "L"), (".jpg", "JPEG", "L"), (".bmp", "BMP", "L"), (".png", "PNG", "LA"))


def value(i):
  return 20 + 25 * i  # ids 0..8 -> distinct gray levels 20..220


def image_id(pixel):
  return int(np.rint((pixel - 20) / 25))


def write_image(path, v, size, fmt, mode):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(np.full(size + (3,), v, np.uint8))
  im = im.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else im.convert(mode)
  im.save(path, format=fmt)


def make_folder(root, splits, variants=MIXED, classes=CLASSES):
  """splits: {split: images per class}. Image k of a split has id k (label = k % classes)."""
  for split, per_class in splits.items():
    for k in range(per_class * len(classes)):
      ext, fmt, mode = variants[k % len(variants)]
      size = (9 + 3 * (k % 4), 7 + 5 * (k % 3))
      write_image(os.path.join(root, split, classes[k % len(classes)], f"im{k}{ext}"),
                  value(k % 9), size, fmt, mode)
  return str(root)


def folder_config(root, **kw):
  c = ml_collections.ConfigDict(dict(
      seed=0, dataset="folder", data_dir=None if root is None else str(root), train_split="train",
      eval_split="validation", train_image_size=12, eval_image_size=12, train_preproc="none",
      eval_preproc="none", eval_crop_pct=0.875, normalization="none", shuffle_buffer=64,
      augment=dict(flip=False, pad=0, randaugment_layers=0, randaugment_magnitude=5,
                   mixup_alpha=0.0, cutmix=False),
      folder_holdout=0.1, corrupt_images="skip",
      image_channels=0))  # 0 (as in configs/default.py): the folder's own
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  return make_folder(tmp_path_factory.mktemp("mixed"), {"train": 4, "test": 3})


def test_class_names_counts_and_channels(mixed, tmp_path):
  info = data.get_dataset_info(folder_config(mixed))
  assert info == data.DatasetInfo(3, 12, 9, (12, 12, 3)) and info.class_names == CLASSES
  assert data.get_dataset_info(folder_config(mixed, image_channels=1)).image_shape == (12, 12, 1)
  gray = make_folder(tmp_path / "gray", {"train": 2, "val": 1}, variants=GRAY)
  info = data.get_dataset_info(folder_config(gray, eval_split="test"))  # alias of val/
  assert (info.num_train_examples, info.num_eval_examples, info.image_shape) == (6, 3,
                                                                                  (12, 12, 1))


@pytest.mark.parametrize("channels,process_count", [(0, 1), (1, 2)])
def test_eval_counts_every_image_once(mixed, channels, process_count):
  config = folder_config(mixed, eval_split="test", image_channels=channels)
  seen, lengths = [], set()
  for p in range(process_count):
    batches = list(data.eval_iterator(config, per_device_batch=2, num_devices=2,
                                      process_index=p, process_count=process_count))
    lengths.add(len(batches))
    for b in batches:
      assert b["images"].shape == (2, 2, 12, 12, channels or 3)
      m = b["mask"] > 0
      ids = [image_id(x) for x in b["images"][m][:, 5, 5, 0]]
      real = b["images"][m]  # uniform images stay uniform
      assert np.all(np.abs(real - real[:, :1, :1, :1]) <= 2.5)
      np.testing.assert_array_equal(b["labels"][m], np.array(ids) % 3)
      seen += ids
      assert np.all(b["images"][~m] == 0)
  assert len(lengths) == 1 and sorted(seen) == list(range(9))


def test_train_iterator_layout_and_resume(mixed):
  config = folder_config(mixed, train_preproc="pad_crop", train_image_size=16,
                         augment=dict(flip=True, pad=2, randaugment_layers=0,
                                      randaugment_magnitude=5, mixup_alpha=0.0, cutmix=False))
  config.normalization = "imagenet"
  it = data.train_iterator(config, per_device_batch=3, num_devices=2)
  batches = [next(it) for _ in range(5)]  # 30 > 12: wraps into later epochs
  for b in batches:
    assert b["images"].shape == (2, 3, 16, 16, 3) and b["images"].dtype == np.float32
    assert b["labels"].shape == (2, 3, 3)
    np.testing.assert_array_equal(b["labels"].sum(-1), 1.0)
  resumed = data.train_iterator(config, per_device_batch=3, num_devices=2, start_step=3)
  for want in batches[3:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["images"], want["images"])
    np.testing.assert_array_equal(got["labels"], want["labels"])
  gray = next(data.train_iterator(folder_config(mixed, image_channels=1), per_device_batch=2,
                                  num_devices=1))
  assert gray["images"].shape == (1, 2, 12, 12, 1)


def test_holdout_split_deterministic_disjoint_stratified(tmp_path):
  root = make_folder(tmp_path / "a", {"train": 10})
  os.makedirs(os.path.join(root, "train", "dog"))
  write_image(os.path.join(root, "train", "dog", "only.png"), 99, (5, 5), "PNG", "RGB")
  config = folder_config(root, folder_holdout=0.2)
  first = folder.scan(config)
  assert set(first.splits) == {"train", "holdout"} and first.class_names == CLASSES + ("dog",)
  held, train = first.splits["holdout"], first.splits["train"]
  assert np.bincount([label for _, label in held], minlength=4).tolist() == [2, 2, 2, 0]
  assert not {p for p, _ in held} & {p for p, _ in train}
  assert len(held) + len(train) == 31
  assert folder.scan(config) == first
  copy = shutil.copytree(root, tmp_path / "elsewhere")  # same split on another machine / path
  assert folder.scan(folder_config(copy, folder_holdout=0.2)).splits == first.splits
  info = data.get_dataset_info(config)  # eval_split 'validation' -> the held-out files
  assert (info.num_train_examples, info.num_eval_examples) == (25, 6)
  for p in range(2):
    got = sum(int(b["mask"].sum()) for b in data.eval_iterator(
        config, per_device_batch=2, num_devices=2, process_index=p, process_count=2))
    assert got == 3
  with pytest.raises(DatasetError, match="folder_holdout"):
    data.get_dataset_info(folder_config(root, folder_holdout=0.0))


def test_bad_layouts_raise_clear_errors(tmp_path):
  def error(root, cls=DatasetError, **kw):
    with pytest.raises(cls) as e:
      data.get_dataset_info(folder_config(root, **kw))
    assert isinstance(e.value, UserError)
    return str(e.value)

  assert "does not exist" in error(tmp_path / "nope", DatasetNotFoundError)
  assert "data_dir" in error(None)
  root = make_folder(tmp_path / "r", {"train": 1, "test": 1})
  os.makedirs(os.path.join(root, "test", "dog"))
  msg = error(root)
  assert "empty class folder" in msg and os.path.join(root, "test", "dog") in msg
  os.rmdir(os.path.join(root, "test", "dog"))
  write_image(os.path.join(root, "test", "dog", "d.png"), 9, (4, 4), "PNG", "L")
  shutil.rmtree(os.path.join(root, "test", "bee"))
  msg = error(root)
  assert "'test'" in msg and "missing in test/: bee" in msg and "not in train/: dog" in msg
  shutil.rmtree(os.path.join(root, "test"))
  msg = error(root, train_split="tarin")
  assert "Unknown split 'tarin'" in msg and "holdout" in msg
  empty = tmp_path / "empty"
  for cls in CLASSES:
    os.makedirs(empty / "train" / cls)
  (empty / "train" / "ant" / "notes.txt").write_text("not an image")
  assert "No images under" in error(empty)
  flat = make_folder(tmp_path / "flat", {"cats": 1}, classes=("x",))
  assert "no 'train' sub-folder" in error(flat)


def test_corrupt_files_skipped_with_one_warning_or_error(tmp_path):
  root = make_folder(tmp_path / "c", {"train": 3, "test": 1})
  bad = [os.path.join(root, "train", "ant", "broken.jpg"),
         os.path.join(root, "test", "cat", "empty.png")]
  with open(bad[0], "wb") as f:
    f.write(b"\xff\xd8 these are not jpeg bytes")
  open(bad[1], "wb").close()
  palette_bmp = os.path.join(root, "train", "bee", "palette.bmp")
  Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).convert(
      "P", palette=Image.Palette.ADAPTIVE).save(palette_bmp, format="BMP")
  config = folder_config(root, eval_split="test")
  with pytest.warns(folder.CorruptImagesWarning) as record:
    info = data.get_dataset_info(config)
  assert len(record) == 1
  msg = str(record[0].message)
  assert "3 unreadable" in msg and "broken.jpg" in msg and "empty.png" in msg
  assert "palette" in msg
  assert (info.num_train_examples, info.num_eval_examples) == (9, 3)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # one warning per folder, not one per iterator
    it = data.train_iterator(config, per_device_batch=4, num_devices=2)
    for _ in range(3):  # > 2 epochs over the 9 readable images: no crash mid-epoch
      assert next(it)["images"].shape == (2, 4, 12, 12, 3)
  with pytest.raises(DatasetError) as e:
    data.get_dataset_info(folder_config(root, corrupt_images="error"))
  assert "3 unreadable" in str(e.value) and "train/ant/broken.jpg" in str(e.value)
  assert all(os.path.exists(p) for p in bad)  # nothing is deleted or rewritten
  with pytest.raises(UserError, match="corrupt_images"):
    data.get_dataset_info(folder_config(root, corrupt_images="ignore"))


def test_tfds_dataset_by_name_reads_classes_from_info():
  config = folder_config(None, dataset="cifar10", eval_split="test")
  with tfds.testing.mock_data(num_examples=6):
    info = data.get_dataset_info(config)
    assert info.num_classes == 10 and info.image_shape == (12, 12, 3)
    # cifar10's code gives only a class count; TFDS restores the names (airplane, ...) from a
    # prepared dataset's label.labels.txt, which the mock lacks.
    assert info.class_names is None
    config.dataset = "horses_or_humans"  # names given in the builder's code
    assert data.get_dataset_info(config).class_names == ("horses", "humans")
    config.dataset = "cifar10"
    config.image_channels = 1  # e.g. fine-tuning a grayscale model on CIFAR
    b = next(data.train_iterator(config, per_device_batch=2, num_devices=1))
    assert b["images"].shape == (1, 2, 12, 12, 1) and b["labels"].shape == (1, 2, 10)
    assert sum(int(b["mask"].sum()) for b in data.eval_iterator(
        config, per_device_batch=4, num_devices=1)) == 6
