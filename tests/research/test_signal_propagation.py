"""Signal propagation at init: a small NF-ResNet shows the alpha/beta pattern; the
unnormalized ResNet does not."""
import csv
import os

import numpy as np
import pytest

from nfnets_jax.research import signal_propagation as sp

ALPHA = 0.2


def test_expected_nf_variance():
  np.testing.assert_allclose(sp.expected_nf_variance([1, 2, 3], ALPHA),
                             [1.04, 1.04, 1.08, 1.04, 1.08, 1.12])


def test_parse_block_metrics_orders_blocks_and_rejects_models_without_metrics():
  out = {"block_10_avg_var": 3.0, "block_2_avg_var": 1.0, "block_2_res_var": 0.5,
         "block_2_avg_sq_mean": 0.1, "logits": np.zeros(3), "block_10_avg_sq_mean": 0.0}
  blocks = sp.parse_block_metrics(out)
  assert [b["block"] for b in blocks] == [2, 10]
  assert blocks[0] == {"block": 2, "avg_var": 1.0, "res_var": 0.5, "avg_sq_mean": 0.1}
  with pytest.raises(ValueError, match="no per-block signal metrics"):
    sp.parse_block_metrics({"logits": 0})


def test_nf_resnet_follows_the_alpha_beta_pattern(tmp_path):
  kwargs = {"nf_resnet50": dict(width=1, depths=(3, 3)),
            "resnet50_noscale": dict(width=0.25, depths=(3, 3))}
  paths, (nf, _) = sp.run(["nf_resnet50", "resnet50_noscale"], str(tmp_path), image_size=16,
                          batch=16, model_kwargs=kwargs, log=lambda s: None)
  var, res, msq = nf.stat("avg_var"), nf.stat("res_var"), nf.stat("avg_sq_mean")
  assert nf.alpha == ALPHA and len(var) == 6
  assert [b["transition"] for b in nf.blocks] == [True, False, False, True, False, False]
  # Variance ~ 1 + k * alpha^2: reset at each stage's first block, then growing.
  np.testing.assert_allclose(var, sp.expected_nf_variance([3, 3], ALPHA), rtol=0.15)
  assert abs(var[3] - var[0]) < 0.15  # the transition resets the variance
  # Inside a stage each block adds alpha^2 times its residual-branch variance.
  for i in (1, 2, 4, 5):
    assert var[i] > var[i - 1]
    np.testing.assert_allclose(var[i] - var[i - 1], ALPHA ** 2 * res[i], rtol=0.35)
  assert np.all(res > 0.3) and np.all(res < 1.5)
  assert np.all(msq < 0.05)  # no mean shift

  # The unnormalized, unscaled ResNet: variance and mean explode with depth.
  rows = list(csv.DictReader(open(paths["csv"])))
  assert [r["model"] for r in rows] == ["nf_resnet50"] * 6 + ["resnet50_noscale"] * 6
  np.testing.assert_allclose([float(r["avg_var"]) for r in rows[:6]], var, rtol=1e-5)
  assert [float(r["expected_var"]) for r in rows[:6]] == pytest.approx([1.04, 1.08, 1.12] * 2)
  plain = np.array([float(r["avg_var"]) for r in rows[6:]])
  assert plain[-1] > 10 * plain[0] and plain[-1] > 20 * var[-1]
  assert max(float(r["avg_sq_mean"]) for r in rows[6:]) > 10
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(paths["png"]) > 5000


def test_skip_gain_init_keeps_nf_blocks_identity():
  """With skip_gain at its init value 0, non-transition blocks do not change the stream."""
  nf = sp.measure("nf_resnet50", image_size=16, batch=8, skip_gain=None,
                  model_kwargs=dict(width=0.5, depths=(2,)))
  var = nf.stat("avg_var")
  assert var[1] == pytest.approx(var[0], rel=1e-5)
