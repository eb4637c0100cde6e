"""``predict.predict_files``: top-k per image, clamped quietly to the model's class count."""
import io
import json

import jax
import numpy as np
from PIL import Image

from nfnets_jax import models
from nfnets_jax import predict
from nfnets_jax import pretrained


def _three_class_model():
  forward = models.transform("nf_demo_tiny", 3)
  params, state = forward.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32), True)
  return pretrained.Pretrained(
      name="nf_demo_tiny", model_kwargs={}, num_classes=3, params=params, state=state,
      image_size=8, eval_image_size=8, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3,
      eval_preproc="none", class_names=("cat", "dog", "eel"), kind="npz")


def test_top_k_beyond_the_class_count_is_clamped_quietly(tmp_path):
  paths = []
  for i in range(2):
    path = tmp_path / f"img{i}.png"
    Image.fromarray(np.random.RandomState(i).randint(0, 256, (8, 8, 3), np.uint8)).save(path)
    paths.append(str(path))
  out, err = io.StringIO(), io.StringIO()
  failed = predict.predict_files("unused", paths, top_k=5, as_json=True, out=out, err=err,
                                 model=_three_class_model())
  assert failed == []
  records = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [r["path"] for r in records] == paths
  for r in records:
    assert sorted(p["label"] for p in r["top_k"]) == ["cat", "dog", "eel"]
    assert abs(sum(p["prob"] for p in r["top_k"]) - 1.0) < 1e-5
  # Only the line naming the model: no warning about --top_k.
  assert err.getvalue().splitlines() == ["nf_demo_tiny (npz, 3 classes) at 8px with none"]
