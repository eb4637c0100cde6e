"""Reporting (``engine/reporting.py``): durations, the per-step training line, and JSON files
that hold numbers as numbers (NaN/Inf as null, never the string "nan")."""
import io
import json

import numpy as np

from nfnets_jax.engine import reporting


def test_console_line_and_duration_format():
  assert reporting.format_duration(3725) == "1h02m05s"
  assert reporting.format_duration(65) == "1m05s"
  assert reporting.format_duration(9.4) == "9s"
  stream = io.StringIO()
  console = reporting.Console(total_steps=100, batch_size=50, enabled=True, stream=stream)
  console.log_train(40, {"loss": 0.51234, "top1": 0.8, "learning_rate": 0.1, "grad_norm": 1.5,
                         "agc/frac_clipped": 0.125, "agc/max_ratio": 3.0}, images_per_sec=100.0)
  # 60 steps left x 50 images / 100 images/s = 30 s.
  assert stream.getvalue() == ("step 40/100 | loss 0.5123 | top1 0.800 | lr 0.1 | gnorm 1.5 | "
                               "clipped 12.5% (max ratio 3) | 100 img/s | ETA 30s\n")
  silent = io.StringIO()
  reporting.Console(10, 1, enabled=False, stream=silent).print("x")
  assert silent.getvalue() == ""


def _strict_json(text):
  """``json.loads`` that refuses NaN/Infinity, as strict JSON readers do."""
  def refuse(constant):
    raise ValueError(f"not JSON: {constant}")
  return json.loads(text, parse_constant=refuse)


def test_metrics_jsonl_and_json_files_hold_numbers_or_null(tmp_path):
  writer = reporting.MetricWriter(str(tmp_path), enabled=True, tensorboard=False)
  writer.write(5, {"loss": np.float32(0.25), "images_per_sec": float("nan"),
                   "grad_norm": np.array(np.inf)})
  writer.close()
  (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
  record = _strict_json(line)
  assert (record["step"], record["loss"]) == (5, 0.25)
  assert record["images_per_sec"] is None and record["grad_norm"] is None
  stream = io.StringIO()
  reporting.dump_json({"top1": np.float64(0.5), "count": np.int64(3), "loss": float("-inf"),
                       "sizes": (np.int32(8), 16), "arr": np.array([1.0, np.nan])}, stream)
  assert _strict_json(stream.getvalue()) == {"top1": 0.5, "count": 3, "loss": None,
                                             "sizes": [8, 16], "arr": [1.0, None]}
