"""The side-by-side input-pipeline benchmark (research/pipeline_benchmark.py).

No speed is asserted: the JPEG folder is what it says, timm's side is the recipe's equivalent,
both sides run end to end and report the documented keys with positive numbers.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax.research import pipeline_benchmark as pb


def test_jpeg_folder_is_deterministic_and_sized(tmp_path):
  a = pb.write_jpeg_folder(str(tmp_path / "a"), num_images=16, num_classes=4, seed=1)
  b = pb.write_jpeg_folder(str(tmp_path / "b"), num_images=16, num_classes=4, seed=1)
  files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
  assert len(files) == 16 and sorted(os.listdir(os.path.join(a, "train"))) == [
      "c0", "c1", "c2", "c3"]
  for rel in files:
    raw = open(os.path.join(a, rel), "rb").read()
    assert raw == open(os.path.join(b, rel), "rb").read()
    h, w, c = tf.io.extract_jpeg_shape(raw).numpy()
    assert pb.IMAGE_SIDES[0] <= h <= pb.IMAGE_SIDES[1] and pb.IMAGE_SIDES[0] <= w <= pb.IMAGE_SIDES[1]
    assert c == 3
  with pytest.raises(ValueError, match="num_images"):
    pb.write_jpeg_folder(str(tmp_path / "c"), num_images=3, num_classes=4)


def test_cpu_seconds_counts_work():
  before = pb.cpu_seconds()
  x = 0
  for i in range(2_000_000):
    x += i
  assert pb.cpu_seconds() - before > 0.01


def test_ours_only_reports_the_documented_keys(tmp_path):
  pb.write_jpeg_folder(str(tmp_path), num_images=16)
  out = pb.compare(batch=4, batches=2, warmup=1, rounds=1, image_size=32, with_timm=False,
                   root=str(tmp_path), log=lambda s: None)
  assert out["timm_skipped"] == "not requested" and "timm" not in out
  ours = out["ours"]
  assert ours["images_per_s"] > 0 and ours["images_per_cpu_s"] > 0
  assert ours["images_per_s_per_core"] == pytest.approx(ours["images_per_s"] / out["cpu_cores"])
  assert "timm not run" in pb.summary(out)
  with pytest.raises(ValueError, match="even batch"):
    pb.compare(batch=3, root=str(tmp_path), with_timm=False)


timm_missing = pb.timm_missing()


@pytest.mark.skipif(timm_missing is not None, reason=f"torch/timm: {timm_missing}")
def test_timm_side_is_the_recipe_and_runs(tmp_path):
  steps = pb.timm_transform(192).transforms
  crop, flip, randaug = steps[0], steps[1], steps[2]
  assert tuple(crop.size) == (192, 192) and crop.scale == (0.08, 1.0)
  np.testing.assert_allclose(crop.ratio, (3 / 4, 4 / 3))
  assert "bicubic" in str(crop.interpolation).lower() and flip.p == 0.5
  assert randaug.num_layers == 4 and len(randaug.ops) == 15
  assert all(op.prob == 1.0 and op.magnitude == 5 for op in randaug.ops)
  mix = pb.timm_mixup(8)
  assert mix.mixup_alpha == 0.2 and mix.cutmix_alpha == 1.0 and mix.mix_prob == 1.0
  pb.write_jpeg_folder(str(tmp_path), num_images=16)
  out = pb.compare(batch=4, batches=2, warmup=1, rounds=1, image_size=32, root=str(tmp_path),
                   log=lambda s: None)
  assert out["timm"]["images_per_s_per_core"] > 0 and out["ratio_ours_over_timm"] > 0
  assert len(out["ratio_per_round"]) == 1 and "ours / timm" in pb.summary(out)


@pytest.mark.slow  # ~20 s: traces every op as its own graph function
def test_profile_names_every_stage_and_op(tmp_path):
  pb.write_jpeg_folder(str(tmp_path), num_images=16)
  prof = pb.profile_stages(num_images=2, image_size=32, with_timm=timm_missing is None,
                           root=str(tmp_path))
  names = [n for n, _ in prof["ours"]]
  assert sum(n.startswith("RandAugment op ") for n in names) == 16
  assert all(ms >= 0 for _, ms in prof["ours"])
  table = pb.profile_table(prof).splitlines()
  assert len(table) == 2 + max(len(prof["ours"]), len(prof.get("timm") or []))
  if timm_missing is None:
    assert sum(n.startswith("RandAugment op ") for n, _ in prof["timm"]) == 15
