"""The synthetic dataset (``data/synthetic.py``): the global batch does not depend on the device
or process layout, and resuming at step k skips exactly k batches."""
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import synthetic  # noqa: E402
from nfnets_jax.data import synthetic as synthetic_data  # noqa: E402


def test_synthetic_global_batch_does_not_depend_on_layout():
  c = synthetic.get_config("tiny")
  one = next(synthetic_data.train_iterator(c, per_device_batch=16, num_devices=1,
                                           process_index=0, process_count=1))
  parts = [next(synthetic_data.train_iterator(c, per_device_batch=2, num_devices=4,
                                              process_index=p, process_count=2))
           for p in range(2)]
  merged = np.concatenate([p["images"].reshape((8,) + p["images"].shape[2:]) for p in parts])
  np.testing.assert_array_equal(merged, one["images"][0])
  # Resuming at step k gives the stream from 0 without its first k batches.
  it = synthetic_data.train_iterator(c, per_device_batch=16, num_devices=1)
  next(it)
  second = next(it)
  resumed = next(synthetic_data.train_iterator(c, per_device_batch=16, num_devices=1,
                                               start_step=1))
  np.testing.assert_array_equal(second["images"], resumed["images"])
