r"""Whole-process time to the first training step of ``experiments/train.py``, side by side.

Each case launches ``experiments/train.py`` on the synthetic set (``configs/nfnet.py:V,synthetic``)
in a fresh workdir, reads its console and stops it once ``step 1/`` is printed: the wall time
from launch to that line (imports, data, init, compile, the step itself) and the process's CPU
time; also the wall time to the "Compiled the train step in Xs" line (everything but running the
step: ``time_to_compiled_s``) and that X (the train step's compile, ``compile_s``). Cases:
``default`` (stacked blocks, compilation cache cold: a fresh cache directory), ``cached`` (the
same again: the second launch reads the cache), ``before`` (``scan_blocks=False``, cache off).

  python scripts/time_to_first_step.py --variants F0,F7 --cases default,cached,before \
      --width 0.25 --group_width 32 --out /tmp/ttfs.jsonl

``--width``/``--group_width`` set ``model_kwargs`` (the same graph with fewer weights); other
arguments after ``--`` go to every training run. One JSON line per run is appended to ``--out``.
"""
import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(variant: str, case: str, scratch: str, extra) -> dict:
  workdir = tempfile.mkdtemp(prefix=f"{variant}_{case}_", dir=scratch)
  cache = os.path.join(scratch, f"cache_{variant}")
  if case == "default":
    shutil.rmtree(cache, ignore_errors=True)
  args = [sys.executable, os.path.join(ROOT, "experiments", "train.py"),
          f"--config={os.path.join(ROOT, 'configs', 'nfnet.py')}:{variant},synthetic",
          f"--workdir={workdir}", "--config.num_train_steps=2"]
  if case == "before":
    args += ["--config.model_kwargs.scan_blocks=False", "--config.compilation_cache_dir="]
  else:
    args += [f"--config.compilation_cache_dir={cache}"]
  args += list(extra)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  compiled, ready, first, tail = None, None, None, []
  for line in proc.stdout:
    tail = (tail + [line.rstrip()])[-20:]
    m = re.search(r"Compiled the train step in ([\d.]+)s", line)
    if m:
      compiled = float(m.group(1))
      ready = time.perf_counter() - start
    if line.startswith("step 1/"):
      first = time.perf_counter() - start
      proc.terminate()
      break
  proc.wait()
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  shutil.rmtree(workdir, ignore_errors=True)
  record = dict(variant=variant, case=case, time_to_first_step_s=first,
                time_to_compiled_s=ready, compile_s=compiled, cpu_s=round(cpu, 1),
                extra=" ".join(extra))
  if first is None:
    record["error"] = "\n".join(tail)
  return record


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="F0,F7")
  parser.add_argument("--cases", default="default,cached,before")
  parser.add_argument("--order", choices=("case", "variant"), default="case",
                      help="'case': every variant's default run, then every cached run, ...")
  parser.add_argument("--out", default="time_to_first_step.jsonl")
  parser.add_argument("--scratch", default=None, help="workdirs and caches (default: a temp dir)")
  parser.add_argument("--width", type=float, default=None, help="model_kwargs.width")
  parser.add_argument("--group_width", type=int, default=None, help="model_kwargs.group_width")
  parser.add_argument("extra", nargs="*", help="after --: flags for experiments/train.py")
  a = parser.parse_args()
  if a.width is not None:
    a.extra.append(f"--config.model_kwargs.width={a.width}")
  if a.group_width is not None:
    a.extra.append(f"--config.model_kwargs.group_width={a.group_width}")
  scratch = a.scratch or tempfile.mkdtemp(prefix="ttfs_")
  os.makedirs(scratch, exist_ok=True)
  variants, cases = a.variants.split(","), a.cases.split(",")
  plan = ([(v, c) for c in cases for v in variants] if a.order == "case"
          else [(v, c) for v in variants for c in cases])
  for variant, case in plan:
    record = run_one(variant, case, scratch, a.extra)
    print(json.dumps(record), flush=True)
    with open(a.out, "a") as f:
      f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  main()
