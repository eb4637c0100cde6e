"""End to end on ``tfds.testing.mock_data`` ImageNet: the real data pipeline (inception crop,
RandAugment, MixUp/CutMix, resize_crop_32 eval), a tiny NF model, two steps, a checkpoint, an
evaluation and every output file."""
import json
import os
import pathlib
import sys

import tensorflow_datasets as tfds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import nfnet  # noqa: E402
from nfnets_jax.weights import checkpoint  # noqa: E402
from nfnets_jax.engine import train  # noqa: E402


def test_two_steps_on_mock_imagenet(tmp_path, capsys):
  config = nfnet.get_config("F0,local")
  config.model = "nf_demo_tiny"
  config.model_kwargs = type(config.model_kwargs)()
  config.train_image_size = 16
  config.eval_image_size = 16
  config.eval_split = "validation"
  config.shuffle_buffer = 16
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 2
  config.checkpoint_every_steps = 1
  config.augment.randaugment_layers = 2
  # tfds.testing.mock_data swaps the whole file system for a fake one while as_dataset runs;
  # an asynchronous checkpoint write in the background would land in it. Save synchronously.
  config.async_checkpointing = False
  workdir = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=12):
    summary = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  lines = out.strip().splitlines()

  assert summary["steps"] == 2 and not summary["preempted"]
  assert summary["num_devices"] == 8 and summary["accumulation_steps"] == 1
  assert summary["final"]["count"] == 12  # every mock validation example exactly once
  for key in ("top1", "top5", "loss"):
    assert 0.0 <= summary["final"][key] and summary["final_ema"][key] >= 0.0
  assert summary["final"]["top1"] <= summary["final"]["top5"] <= 1.0
  assert lines[-1] == (f"final: top1={summary['final']['top1']:.4f} "
                       f"top5={summary['final']['top5']:.4f}")
  assert lines[-2].startswith("final_ema: top1=")
  assert "step 1/2" in out and "step 2/2 " in out and "img/s | ETA 0s" in out

  # Files: metrics.jsonl (train steps 1, 2 and one eval), TensorBoard events, summary, ckpts.
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert train_steps == [1, 2]
  assert len(evals) == 1 and evals[0]["step"] == 2
  assert {"loss", "top1", "learning_rate", "grad_norm", "agc/frac_clipped",
          "agc/max_ratio"} <= set(records[0])
  assert {"top1", "top5", "loss", "ema_top1", "ema_top5", "ema_loss"} <= set(evals[0])
  for split in ("train", "eval"):
    events = os.listdir(os.path.join(workdir, "tensorboard", split))
    assert any(e.startswith("events.out.tfevents") for e in events)
  saved = json.load(open(os.path.join(workdir, "summary.json")))
  assert saved["final"] == summary["final"] and saved["config"]["model"] == "nf_demo_tiny"
  assert saved["images_per_sec"] is None or saved["images_per_sec"] > 0
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()
  params, _ = checkpoint.load_params(workdir)
  assert "NFDemo/~/linear" in params and params["NFDemo/~/linear"]["w"].shape == (16, 1000)
