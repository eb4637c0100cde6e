"""timm's dm_nfnet_f0 under torch: train (bf16 autocast, SGD) and eval img/s on one device.

The peer row of ``scripts/gpu_check.sh``: same model, image size, per-device batch and precision
as our engine's row, channels-last on CUDA. ``--smoke`` uses a tiny timm NFNet on the CPU.
"""
import argparse
import json
import time

import timm
import torch


def timed(fn, steps, warmup=3):
  for _ in range(warmup):
    fn()
  sync()
  t0 = time.time()
  for _ in range(steps):
    fn()
  sync()
  return (time.time() - t0) / steps


def sync():
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--eval_batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  name, train_size, test_size = ("dm_nfnet_f0", 192, 256)
  kwargs = {}
  if args.smoke:
    name, train_size, test_size = "nfnet_l0", 32, 32
    kwargs = dict(num_classes=10)
  model = timm.create_model(name, **kwargs).to(device).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
  num_classes = model.num_classes
  x = torch.randn(args.batch, 3, train_size, train_size, device=device).to(
      memory_format=torch.channels_last)
  y = torch.randint(0, num_classes, (args.batch,), device=device)

  def train_step():
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
      loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  model.train()
  train_s = timed(train_step, args.steps)
  model.eval()
  xe = torch.randn(args.eval_batch, 3, test_size, test_size, device=device).to(
      memory_format=torch.channels_last)

  def eval_step():
    with torch.no_grad():
      model(xe)

  eval_s = timed(eval_step, args.steps)
  out = dict(model=name, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
             torch=torch.__version__, timm=timm.__version__, train_batch=args.batch,
             train_image_size=train_size, train_images_per_s=args.batch / train_s,
             eval_batch=args.eval_batch, eval_image_size=test_size,
             eval_images_per_s=args.eval_batch / eval_s, train_precision="bf16 autocast",
             eval_precision="float32")
  print(f"timm {name} on {out['device']}: train {out['train_images_per_s']:.1f} img/s "
        f"(batch {args.batch}, {train_size}px, bf16 autocast), eval "
        f"{out['eval_images_per_s']:.1f} img/s (batch {args.eval_batch}, {test_size}px, fp32)")
  print(json.dumps(out))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
