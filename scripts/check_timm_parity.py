"""Measures our logits against real timm's for each supported timm architecture at full size.

  python scripts/check_timm_parity.py --models=dm_nfnet_f0,nfnet_l0 --image_size=64 --batch=2

For each name: timm builds the model (pretrained=False; no download), every tensor is perturbed
(gains, skip gains and biases included: timm starts skip gains and last-conv gains at zero),
the state dict goes through ``nfnets_jax.weights.timm.to_haiku``, and both models run the same
random images in float32. Prints a table and one JSON line per model (and writes them all to
``--json_out`` when given). The error is max|our - timm| / max|timm| over the logits.
Needs the timm extra: ``bash scripts/install_timm_extra.sh .venv/bin/python``.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nfnets_jax import cli  # noqa: E402
from nfnets_jax import models  # noqa: E402
from nfnets_jax.weights import timm as timm_weights  # noqa: E402
from nfnets_jax.weights import timm_parity as parity  # noqa: E402

DEFAULT_MODELS = ["dm_nfnet_f0", "dm_nfnet_f1", "nfnet_l0", "eca_nfnet_l0", "eca_nfnet_l1",
                  "eca_nfnet_l2", "nf_regnet_b1", "nf_resnet50", "test_nfnet"]

FLAGS = flags.FLAGS
flags.DEFINE_list("models", DEFAULT_MODELS, "Comma-separated timm names (supported: "
                  f"{', '.join(timm_weights.TIMM_MODELS)}).")
flags.DEFINE_integer("image_size", 64, "Input height and width.")
flags.DEFINE_integer("batch", 2, "Number of random images.")
flags.DEFINE_integer("num_classes", 1000, "Classifier size.")
flags.DEFINE_string("json_out", None, "Also write the results here (JSON list).")


def measure(timm_name: str, image_size: int, batch: int, num_classes: int, timm, torch) -> dict:
  t0 = time.time()
  model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes).eval()
  parity.perturb_(model)
  state = parity.numpy_state(model)
  x = np.random.RandomState(0).randn(batch, image_size, image_size, 3).astype(np.float32)
  ref = parity.timm_logits(model, x)
  del model
  t1 = time.time()
  # grouped_conv_impl only changes how XLA runs grouped convs (faster to compile on CPU).
  name, kwargs, params, _ = timm_weights.to_haiku(
      state, timm_name, model_overrides=dict(grouped_conv_impl="native"))
  n_params = int(sum(v.size for v in state.values()))
  del state
  fwd = models.transform(name, num_classes, **kwargs)
  ours = np.asarray(jax.jit(lambda p, im: fwd.apply(p, {}, None, im, False)[0]["logits"])(
      params, jnp.asarray(x)))
  t2 = time.time()
  err = parity.max_normalised_error(ours, ref)
  return dict(timm_name=timm_name, model_name=name,
              model_overrides={k: v for k, v in kwargs.items() if k != "grouped_conv_impl"},
              image_size=image_size, batch=batch, num_classes=num_classes,
              params=n_params, max_abs_logit=float(np.max(np.abs(ref))), max_norm_error=err,
              timm_seconds=round(t1 - t0, 1), ours_seconds=round(t2 - t1, 1))


def main(argv) -> int:
  """0 when every model's error is below 1e-4, else 2."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    import timm  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except Exception as e:  # noqa: BLE001  (torchvision on a CPU torch raises RuntimeError)
    cli.fail(f"timm is not importable ({type(e).__name__}: {e}); run "
             "bash scripts/install_timm_extra.sh .venv/bin/python")
  names = [n.strip() for n in FLAGS.models if n.strip()]
  unknown = [n for n in names if n not in timm_weights.TIMM_MODELS]
  if unknown:
    raise app.UsageError(f"--models: unsupported: {', '.join(unknown)}; supported: "
                         f"{', '.join(timm_weights.TIMM_MODELS)}")
  results = []
  print(f"{'timm name':<14} {'our model':<18} {'px':>4} {'params':>12} {'max|logit|':>10} "
        f"{'error':>9} {'seconds':>8}", flush=True)
  for name in names:
    r = measure(name, FLAGS.image_size, FLAGS.batch, FLAGS.num_classes, timm, torch)
    results.append(r)
    print(f"{r['timm_name']:<14} {r['model_name']:<18} {r['image_size']:>4} {r['params']:>12,} "
          f"{r['max_abs_logit']:>10.3g} {r['max_norm_error']:>9.2e} "
          f"{r['timm_seconds'] + r['ours_seconds']:>8.0f}", flush=True)
    print("JSON " + json.dumps(r, sort_keys=True), flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(results, f, indent=1, sort_keys=True)
  worst = max(r["max_norm_error"] for r in results)
  print(f"worst max-normalised logit error: {worst:.2e}")
  return 0 if worst < 1e-4 else 2


if __name__ == "__main__":
  cli.run(main)
