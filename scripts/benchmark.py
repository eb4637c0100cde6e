"""Benchmarks NFNet training/eval steps, AGC overhead, grouped-conv paths and the input pipeline.

Examples (see docs/benchmarks.md for the measured tables):

  python scripts/benchmark.py --model=nfnet_f0 --batch=8 --image_size=192 --mode=train
  python scripts/benchmark.py --mode=train --compare=impl     # native vs split grouped convs
  python scripts/benchmark.py --mode=train --compare=agc      # sgd_agc vs sgd, interleaved
  python scripts/benchmark.py --mode=train --compare=sam      # no SAM vs SAM at 1.0 and 0.2
  python scripts/benchmark.py --mode=eval --compare=fold      # inference-folded WS vs not
  python scripts/benchmark.py --mode=train --compare=timm     # vs timm dm_nfnet_f0 (torch)
  python scripts/benchmark.py --sweep --sweep_batches=1,4,8 --sweep_modes=train,eval
  python scripts/benchmark.py --sweep --sweep_models=nfnet_f0,nfnet_f3,nfnet_f7 \
      --sweep_batches=1 --compile_only                      # compile time of the first step
  python scripts/benchmark.py --input_pipeline               # ImageNet train pipeline img/s
  python scripts/benchmark.py --pipeline_only --compare=timm  # pipeline vs timm's, same JPEGs
  python scripts/benchmark.py --mode=checkpoint --batch=2     # stall per save, sync vs async
  python scripts/benchmark.py --mode=engine --engine_models=nfnet_f0,nfnet_f7 \
      --precision=bfloat16                                  # per-device memory: fsdp, remat
  python scripts/benchmark.py --mode=engine --engine_run --engine_layouts=pmap,mesh:1 \
      --engine_remat=none --precision=bfloat16 --per_device_batch=32   # img/s and MFU (GPU)

On a GPU run the same commands with ``--precision=bfloat16`` and a larger ``--batch``; 'auto'
grouped convolutions resolve to the native kernel there and the peak is a bf16 matmul.
"""
from __future__ import annotations

import json
import os
import sys
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from nfnets_jax import cli  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax import models  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax.engine import compile_cache  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax.research import benchmark  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax.research import engine_benchmark  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax.research import pipeline_benchmark  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "nfnet_f0", "Registered model name.")
flags.DEFINE_integer("batch", 8, "Batch size.", lower_bound=1)
flags.DEFINE_integer("image_size", 0, "0 = the model's train size (train) or test size (eval).")
flags.DEFINE_enum("mode", "train", list(benchmark.MODES) + ["checkpoint", "engine"],
                  "checkpoint: training stall per save, sync vs async (--ckpt_targets).")
flags.DEFINE_list("ckpt_targets", ["demo", "f0"],
                  "--mode=checkpoint: demo (configs/fashion_mnist.py, batch 128) and/or f0 "
                  "(configs/nfnet.py:F0 at --batch), on synthetic data.")
flags.DEFINE_integer("ckpt_saves", 3, "--mode=checkpoint: saves timed.")
flags.DEFINE_enum("precision", "float32", list(benchmark.PRECISIONS),
                  "Compute dtype of the train step; eval runs in float32, as the engine's "
                  "evaluation (steps.make_eval_apply).")
flags.DEFINE_bool("no_agc", False, "Plain SGD ('sgd') instead of 'sgd_agc'.")
flags.DEFINE_enum("grouped_conv_impl", "auto", ["auto", "native", "split"],
                  "Grouped convolution implementation.")
flags.DEFINE_integer("num_classes", 1000, "Classifier size.")
cli.define_model_kw("model_kw", "--model")
flags.DEFINE_integer("steps", 5, "Timed steps (per variant).", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed steps after the first call.", lower_bound=0)
flags.DEFINE_enum("compare", None, ["impl", "agc", "fold", "timm", "sam"],
                  "impl: native vs split grouped convs; agc: sgd_agc vs sgd; fold (eval): "
                  "weight standardization folded once vs every forward; timm: ours vs timm's "
                  "dm_* model (torch, lazily imported; eval: ours unfolded and folded); sam: "
                  "no SAM vs SAM at batch fraction 1.0 and --sam_batch_fraction. Interleaved.")
flags.DEFINE_float("sam_rho", 0.05, "--compare=sam: SAM radius.")
flags.DEFINE_float("sam_batch_fraction", 0.2,
                   "--compare=sam: the cheap variant's ascent fraction (the paper's runs).")
flags.DEFINE_multi_string(
    "xla_variant", None, "'name=value[;name=value]' XLA compile options (DebugOptions fields, "
    "e.g. xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT); each adds "
    "a variant of the step compiled with them, timed in the same interleaved rounds (also "
    "with --compare=timm in train mode). Repeatable.")
flags.DEFINE_bool("fold_ws", False, "Eval: fold the weight standardization into the kernels "
                  "once per parameter set (layers.fold_weight_standardization).")
flags.DEFINE_integer("update_rounds", 20,
                     "--compare=agc: interleaved rounds of the update-only timing.")
flags.DEFINE_bool("sweep", False, "Product of the --sweep_* lists.")
flags.DEFINE_list("sweep_models", None, "Models of --sweep (default: --model).")
flags.DEFINE_list("sweep_batches", None, "Batch sizes of --sweep (default: --batch).")
flags.DEFINE_list("sweep_modes", None, "Modes of --sweep (default: --mode).")
flags.DEFINE_list("sweep_impls", None, "Grouped conv implementations of --sweep.")
flags.DEFINE_bool("compile_only", False,
                  "Lower and compile only (no parameters allocated, no steps run).")
flags.DEFINE_bool("no_peak", False, "Skip the matmul peak measurement.")
flags.DEFINE_integer("peak_n", 0, "Matmul size for the peak (0 = auto).")
flags.DEFINE_bool("input_pipeline", False,
                  "Also measure the ImageNet train input pipeline on generated JPEGs.")
flags.DEFINE_integer("pipeline_images", 256, "Generated JPEGs for --input_pipeline.")
flags.DEFINE_integer("pipeline_batches", 10, "Timed batches.")
flags.DEFINE_bool("pipeline_only", False, "Only the input pipeline. With --compare=timm: "
                  "ours vs timm's loader on one folder of generated JPEGs "
                  "(research/pipeline_benchmark.py).")
flags.DEFINE_integer("pipeline_rounds", 3, "--pipeline_only --compare=timm: alternating rounds.",
                     lower_bound=1)
flags.DEFINE_bool("pipeline_profile", False, "--pipeline_only: also time each stage of one "
                  "image (ours and, with --compare=timm, timm's).")
flags.DEFINE_string("json", None, "Write all results to this JSON file.")
flags.DEFINE_list("engine_models", None, "--mode=engine: models (default: --model).")
flags.DEFINE_list("engine_layouts", ["mesh:1", "mesh:8"],
                  "--mode=engine: 'pmap' or 'mesh:FSDP' per layout, over every device.")
flags.DEFINE_list("engine_remat", ["none", "blocks"], "--mode=engine: config.remat values.")
flags.DEFINE_integer("per_device_batch", 4, "--mode=engine: examples per device.",
                     lower_bound=1)
flags.DEFINE_bool("engine_run", False, "--mode=engine: also run each step (img/s, MFU); "
                  "without it only the compiled memory analysis (from shapes, no allocation).")


def _image_size(model: str, mode: str, requested: int) -> int:
  if requested:
    return requested
  info = models.get_info(model)
  return info.train_image_size if mode == "train" else info.test_image_size


def _precision(mode: str, requested: str) -> str:
  """Eval runs in float32, as the engine's evaluation does."""
  return requested if mode == "train" else "float32"


def build_configs(args) -> List[benchmark.BenchConfig]:
  """The configurations to measure; ``args``: the parsed flags."""
  base = dict(num_classes=args.num_classes, model_kwargs=cli.model_kwargs(args))
  if args.sweep:
    cfgs = []
    for model in args.sweep_models or [args.model]:
      for mode in args.sweep_modes or [args.mode]:
        for impl in args.sweep_impls or [args.grouped_conv_impl]:
          for batch in args.sweep_batches or [args.batch]:
            cfgs.append(benchmark.BenchConfig(
                model=model, mode=mode, batch=int(batch), agc=not args.no_agc,
                image_size=_image_size(model, mode, args.image_size),
                precision=_precision(mode, args.precision), grouped_conv_impl=impl, **base))
    return cfgs
  one = dict(model=args.model, mode=args.mode, batch=args.batch,
             image_size=_image_size(args.model, args.mode, args.image_size),
             precision=_precision(args.mode, args.precision), **base)
  if args.compare == "impl":
    return [benchmark.BenchConfig(grouped_conv_impl="native", agc=not args.no_agc, **one),
            benchmark.BenchConfig(grouped_conv_impl="split", agc=not args.no_agc, **one)]
  if args.compare == "agc":
    if args.mode != "train":
      raise app.UsageError("--compare=agc needs --mode=train.")
    return [benchmark.BenchConfig(grouped_conv_impl=args.grouped_conv_impl, agc=True, **one),
            benchmark.BenchConfig(grouped_conv_impl=args.grouped_conv_impl, agc=False, **one)]
  if args.compare == "sam":
    if args.mode != "train":
      raise app.UsageError("--compare=sam needs --mode=train.")
    kw = dict(one, grouped_conv_impl=args.grouped_conv_impl, agc=not args.no_agc)
    return [benchmark.BenchConfig(**kw),
            benchmark.BenchConfig(sam_rho=args.sam_rho, sam_batch_fraction=1.0, **kw),
            benchmark.BenchConfig(sam_rho=args.sam_rho,
                                  sam_batch_fraction=args.sam_batch_fraction, **kw)]
  if args.compare == "fold" or (args.compare == "timm" and args.mode == "eval"):
    if args.mode != "eval":
      raise app.UsageError("--compare=fold needs --mode=eval.")
    return [benchmark.BenchConfig(grouped_conv_impl=args.grouped_conv_impl, fold_ws=False,
                                  **one),
            benchmark.BenchConfig(grouped_conv_impl=args.grouped_conv_impl, fold_ws=True, **one)]
  return [benchmark.BenchConfig(grouped_conv_impl=args.grouped_conv_impl,
                                agc=not args.no_agc, fold_ws=args.fold_ws, xla_options=opts,
                                **one)
          for opts in [{}] + [_xla_options(v) for v in args.xla_variant or []]]


def _xla_options(spec: str) -> dict:
  """'a=1;b=x,y' -> {'a': '1', 'b': 'x,y'} (values stay strings; XLA parses them)."""
  opts = {}
  for item in filter(None, spec.split(";")):
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
      raise app.UsageError(f"--xla_variant: expected name=value[;name=value], got {spec!r}.")
    opts[name.strip()] = value.strip()
  return opts


def _fmt(x, spec):
  return "n/a" if x is None else format(x, spec)


def table(results: List[dict]) -> str:
  """Markdown table; 'XLA GiB' is the compiled step's live-buffer estimate, 'peak GiB' the
  backend's peak (process-wide, see ``peak_memory_source``)."""
  head = ("| config | lower s | compile s | step s (median) | img/s | GFLOP/s | % peak "
          "| XLA GiB | peak GiB |")
  rows = [head, "|" + "---|" * 9]
  for r in results:
    gfl = r.get("achieved_flops_per_s")
    frac = r.get("fraction_of_peak")
    mem = r.get("peak_memory_bytes")
    est = (r.get("compiled_memory") or {}).get("total_live_estimate_bytes")
    rows.append(
        f"| {r['name']} | {_fmt(r['lower_s'], '.1f')} | {_fmt(r['compile_s'], '.1f')} | "
        f"{_fmt(r.get('step_time_median_s'), '.3f')} | {_fmt(r.get('images_per_s'), '.2f')} | "
        f"{_fmt(gfl and gfl / 1e9, '.1f')} | {_fmt(frac and 100 * frac, '.1f')} | "
        f"{_fmt(est and est / 2**30, '.2f')} | {_fmt(mem and mem / 2**30, '.2f')} |")
  return "\n".join(rows)


def checkpoint_main(args) -> None:
  """``--mode=checkpoint``: stall per save (sync vs async) as a fraction of a step; table + JSON."""
  results = []
  for target in args.ckpt_targets:
    config = benchmark.checkpoint_target_config(target, batch=args.batch)
    for async_save in (False, True):
      results.append(dict(target=target, **benchmark.checkpoint_stall_benchmark(
          config, async_save=async_save, saves=args.ckpt_saves, window=args.steps,
          warmup=args.warmup, log=lambda s: print(s, flush=True))))
  print("| target | save | state MiB | step ms | save call ms | stall ms | stall (steps) "
        "| every | amortised % of a step |\n|" + "---|" * 9)
  for r in results:
    kind = "async" if r["async_save"] else "sync"
    print(f"| {r['target']} ({r['model']}, b{r['batch']}) | {kind}"
          f" | {r['state_mb']:.1f} | {r['step_s'] * 1e3:.1f} | {r['save_call_s'] * 1e3:.1f} | "
          f"{r['stall_s'] * 1e3:.1f} | {r['stall_steps']:.2f} | {r['checkpoint_every_steps']} | "
          f"{100 * r['amortised_fraction']:.4f} |")
  out = dict(machine=benchmark.machine_info(), argv=list(sys.argv), checkpoint=results)
  print(json.dumps(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


def engine_main(args) -> None:
  """``--mode=engine``: per-device compiled memory (and with --engine_run img/s and MFU) of the
  engine's train step for each model x layout x remat (research/engine_benchmark.py)."""
  cases = []
  for model in args.engine_models or [args.model]:
    for remat in args.engine_remat:
      for layout in args.engine_layouts:
        mode, _, fsdp = layout.partition(":")
        if mode not in ("pmap", "mesh") or (mode == "pmap" and fsdp):
          raise app.UsageError(f"--engine_layouts: 'pmap' or 'mesh:FSDP', got {layout!r}.")
        cases.append(engine_benchmark.EngineCase(
            model=model, per_device_batch=args.per_device_batch, image_size=args.image_size,
            precision=args.precision, parallel=mode, fsdp=int(fsdp or 1), remat=remat,
            num_classes=args.num_classes, model_kwargs=cli.model_kwargs(args)))
  out = dict(machine=benchmark.machine_info(), argv=list(sys.argv), memory=[], throughput=[])
  for case in cases:
    print(f"compiling {case.name} ...", flush=True)
    out["memory"].append(engine_benchmark.memory(case))
    if args.engine_run:
      out["throughput"].append(engine_benchmark.throughput(case, steps_timed=args.steps,
                                                           warmup=args.warmup))
  print(engine_benchmark.memory_table(out["memory"]))
  if out["throughput"]:
    print(engine_benchmark.throughput_table(out["throughput"]))
  print(json.dumps(out["memory"] + out["throughput"]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


def main(argv: List[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.compare and FLAGS.sweep:
    raise app.UsageError("--compare and --sweep are exclusive; run them separately.")
  # Compile times are measured, never read back from a persistent cache (JAX_COMPILATION_CACHE_DIR).
  compile_cache.disable()
  if FLAGS.xla_variant and (FLAGS.sweep or FLAGS.mode == "checkpoint" or FLAGS.compare not in (
      None, "timm") or (FLAGS.compare == "timm" and FLAGS.mode != "train")):
    raise app.UsageError("--xla_variant adds variants to a single config (no --sweep, "
                         "--mode=checkpoint or --compare other than timm in train mode).")
  if FLAGS.mode == "checkpoint":
    checkpoint_main(FLAGS)
    return
  if FLAGS.mode == "engine":
    engine_main(FLAGS)
    return
  measure_main(FLAGS)


def measure_main(args) -> None:
  """Peak, step timings and comparisons as the flags say: a table, JSON lines, ``--json``."""
  out = dict(machine=benchmark.machine_info(), argv=list(sys.argv),
             flop_convention=benchmark.FLOP_CONVENTION, results=[], comparisons=[])
  print(f"backend {out['machine']['backend']} ({out['machine']['device_kind']}), "
        f"{out['machine']['cpu_model']}, {out['machine']['cpu_cores']} cores, "
        f"jax {out['machine']['jax']}, load average "
        f"{' '.join(f'{v:.2f}' for v in out['machine']['load_average'])}", flush=True)
  if not args.pipeline_only:
    peak = None
    if not args.no_peak and not args.compile_only:
      out["peak"] = benchmark.matmul_peak(args.peak_n or None)
      peak = out["peak"]["flops_per_s"]
      print(f"matmul peak: {out['peak']['n']}^2 {out['peak']['dtype']}: "
            f"{peak / 1e9:.1f} GFLOP/s", flush=True)
    cfgs = build_configs(args)
    if args.compare == "timm":
      why = benchmark.timm_available()
      if why:
        raise app.UsageError(f"--compare=timm needs torch + timm ({why}); run "
                             "`bash scripts/install_timm_extra.sh .venv/bin/python`.")
      if args.model not in benchmark.TIMM_MODELS or args.precision != "float32":
        raise app.UsageError(
            f"--compare=timm: float32 and one of {sorted(benchmark.TIMM_MODELS)}.")
      results = benchmark.measure_with_timm(
          cfgs, steps=args.steps, warmup=args.warmup, peak_flops=peak,
          log=lambda s: print(s, flush=True))
    else:
      results = benchmark.measure(
          cfgs, steps=args.steps, warmup=args.warmup, peak_flops=peak,
          compile_only=args.compile_only, log=lambda s: print(s, flush=True))
    if peak is not None:
      # Background load makes a single matmul reading noisy: take the best of before/after.
      after = benchmark.matmul_peak(args.peak_n or None)
      out["peak_after"] = after
      if after["flops_per_s"] > peak:
        out["peak"] = after
        peak = after["flops_per_s"]
        for r in results:
          if "achieved_flops_per_s" in r:
            r["fraction_of_peak"] = r["achieved_flops_per_s"] / peak
      print(f"matmul peak after: {after['flops_per_s'] / 1e9:.1f} GFLOP/s; using "
            f"{peak / 1e9:.1f}", flush=True)
    out["results"] = results
    if args.compare == "impl":
      out["comparisons"].append(benchmark.ratio(results, 1, 0, "split_over_native"))
    elif args.compare == "fold":
      out["comparisons"].append(benchmark.ratio(results, 1, 0, "folded_over_unfolded"))
    elif args.compare == "sam":
      out["comparisons"].append(benchmark.ratio(results, 1, 0, "sam_full_over_plain"))
      out["comparisons"].append(benchmark.ratio(results, 2, 0, "sam_fraction_over_plain"))
    elif args.compare == "timm":
      for i in range(len(cfgs)):
        out["comparisons"].append(benchmark.ratio(results, i, len(results) - 1, "ours_over_timm"))
    elif args.compare == "agc":
      c = benchmark.ratio(results, 0, 1, "agc_over_sgd")
      if "step_time_ratio" in c:
        c["agc_overhead_fraction"] = c["step_time_ratio_per_round_median"] - 1.0
        # The step difference is noisy; the update-only difference isolates AGC's cost.
        upd = benchmark.optimizer_update_benchmark(cfgs[0], rounds=args.update_rounds)
        c["update_only"] = upd
        step_sgd = results[1]["step_time_median_s"]
        for stat in ("median_s", "min_s"):
          extra = upd["sgd_agc"][stat] - upd["sgd"][stat]
          c[f"agc_update_extra_{stat}"] = extra
          c[f"agc_overhead_fraction_from_update_{stat[:-2]}"] = extra / step_sgd
      out["comparisons"].append(c)
    print(table(results))
    for c in out["comparisons"]:
      print(json.dumps(c))
      if "throughput_ratio" in c:
        print(f"  {c['numerator']} / {c['denominator']}: throughput x{c['throughput_ratio']:.2f}"
              f" (per-round step-time ratio {c['step_time_ratio_per_round_median']:.3f})")
    out["load_average_end"] = list(os.getloadavg())
  if args.pipeline_only and args.pipeline_profile:
    prof = pipeline_benchmark.profile_stages(with_timm=args.compare == "timm")
    out["pipeline_profile"] = prof
    print(pipeline_benchmark.profile_table(prof), flush=True)
  if args.pipeline_only and args.compare == "timm":
    out["input_pipeline"] = pipeline_benchmark.compare(
        num_images=args.pipeline_images, batches=args.pipeline_batches,
        rounds=args.pipeline_rounds, log=lambda s: print(s, flush=True))
    print(pipeline_benchmark.summary(out["input_pipeline"]))
  elif args.input_pipeline or args.pipeline_only:
    out["input_pipeline"] = benchmark.input_pipeline_benchmark(
        num_images=args.pipeline_images, batches=args.pipeline_batches,
        log=lambda s: print(s, flush=True))
    ip = out["input_pipeline"]
    print(f"input pipeline: {ip['images_per_s']:.1f} img/s, "
          f"{ip['images_per_s_per_core']:.1f} img/s per core ({ip['cpu_cores']} cores)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  cli.run(main)
