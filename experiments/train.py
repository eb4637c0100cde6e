r"""Trains an experiment config: ``python experiments/train.py --config=CONFIG --workdir=DIR``.

Any config field can be overridden (``--config.batch_size=1024``). Rerunning with the same
workdir resumes from its latest checkpoint. Multi-host: pass ``--jax_distributed`` (with the
coordinator flags, or rely on the cluster environment that ``jax.distributed.initialize``
detects on TPU pods / SLURM) and run the same command on every host.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF only feeds data; keep its C++ logs quiet

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nfnets_jax import cli  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax import engine  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax.engine import compile_cache  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.json.")
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize (multi-host); also on when the coordinator "
                  "flags or NFNETS_COORDINATOR are set.")
flags.DEFINE_string("coordinator_address", os.environ.get("NFNETS_COORDINATOR"),
                    "host:port of process 0 (env NFNETS_COORDINATOR).")
flags.DEFINE_integer("num_processes", int(os.environ.get("NFNETS_NUM_PROCESSES", "0")) or None,
                     "Number of processes (env NFNETS_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", int(os.environ.get("NFNETS_PROCESS_ID", "-1")),
                     "This process's index (env NFNETS_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.jax_distributed or FLAGS.coordinator_address:
    kwargs = {}
    if FLAGS.coordinator_address:
      kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                    num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    jax.distributed.initialize(**kwargs)
  # Before anything compiles: a relaunch reads its compiled steps from disk.
  compile_cache.enable(FLAGS.config.get("compilation_cache_dir", compile_cache.AUTO))
  engine.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
