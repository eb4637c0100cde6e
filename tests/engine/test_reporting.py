"""Console reporting (``engine/reporting.py``): durations and the per-step training line."""
import io

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
