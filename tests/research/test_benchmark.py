"""Tests of the benchmark tool (scripts/benchmark.py, nfnets_jax/benchmark.py).

No timing is asserted: only that the tool runs end to end and reports sane, positive numbers
with the documented keys and conventions, and that the two grouped-convolution paths compute
the same function (outputs and gradients).
"""
import json
import os
import subprocess
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nfnets_jax import optim
from nfnets_jax.engine import parallel
from nfnets_jax.engine import steps
from nfnets_jax.research import benchmark
from nfnets_jax.research import flops
from nfnets_jax.models import nfnet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")

RESULT_KEYS = {
    "name", "model", "mode", "batch", "image_size", "precision", "optimizer",
    "grouped_conv_impl", "grouped_conv_resolved", "lower_s", "compile_s", "first_step_s",
    "step_times_s", "step_time_median_s", "images_per_s", "flops_per_step",
    "achieved_flops_per_s", "fraction_of_peak", "peak_memory_bytes", "peak_memory_source",
    "compiled_memory"}

# Float32 tolerance for native vs split: the same products summed per group in possibly
# different orders by different XLA kernels.
RTOL, ATOL = 1e-5, 1e-6


def _run_script(tmp_path, *args):
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [sys.executable, SCRIPT, f"--json={out}", *args], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(out) as f:
    return json.load(f), proc.stdout


def _check_result(r, batch, steps):
  assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
  assert r["batch"] == batch
  assert len(r["step_times_s"]) == steps
  for key in ("lower_s", "compile_s", "first_step_s", "step_time_median_s", "images_per_s",
              "flops_per_step", "achieved_flops_per_s", "fraction_of_peak",
              "peak_memory_bytes"):
    assert r[key] > 0, (key, r[key])
  assert all(t > 0 for t in r["step_times_s"])
  np.testing.assert_allclose(r["images_per_s"], batch / r["step_time_median_s"], rtol=1e-9)
  np.testing.assert_allclose(r["achieved_flops_per_s"],
                             r["flops_per_step"] / r["step_time_median_s"], rtol=1e-9)
  assert r["compiled_memory"]["temp_size_in_bytes"] >= 0


def test_script_end_to_end_writes_json(tmp_path):
  data, stdout = _run_script(
      tmp_path, "--model=nf_demo_tiny", "--image_size=16", "--batch=2", "--num_classes=10",
      "--steps=2", "--warmup=0", "--peak_n=256")
  assert set(data) >= {"machine", "argv", "flop_convention", "peak", "peak_after", "results",
                       "comparisons"}
  assert data["machine"]["backend"] == "cpu" and data["machine"]["cpu_cores"] >= 1
  assert data["peak"]["n"] == 256 and data["peak"]["flops_per_s"] > 0
  assert data["peak"]["flops_per_s"] >= data["peak_after"]["flops_per_s"]
  (r,) = data["results"]
  _check_result(r, batch=2, steps=2)
  assert r["optimizer"] == "sgd_agc" and r["mode"] == "train"
  # nf_demo_tiny has no grouped convolutions and no grouped_conv_impl argument.
  assert r["grouped_conv_impl"] == "auto"
  # FLOP convention: train = 3 x forward, forward = 2 x MACs per image x batch.
  macs = flops.count_macs("nf_demo_tiny", 16, 10)
  assert r["flops_per_step"] == 3 * 2 * macs * 2
  np.testing.assert_allclose(r["fraction_of_peak"],
                             r["achieved_flops_per_s"] / data["peak"]["flops_per_s"])
  assert data["comparisons"] == []
  assert "| config |" in stdout


@pytest.mark.slow
def test_script_compare_agc(tmp_path):
  data, stdout = _run_script(
      tmp_path, "--model=nf_demo_tiny", "--image_size=16", "--batch=2", "--num_classes=10",
      "--steps=2", "--warmup=0", "--peak_n=256", "--compare=agc", "--update_rounds=2")
  agc, sgd = data["results"]
  assert (agc["optimizer"], sgd["optimizer"]) == ("sgd_agc", "sgd")
  for r in (agc, sgd):
    _check_result(r, batch=2, steps=2)
  (cmp,) = data["comparisons"]
  assert cmp["kind"] == "agc_over_sgd"
  np.testing.assert_allclose(cmp["agc_overhead_fraction"],
                             cmp["step_time_ratio_per_round_median"] - 1.0)
  np.testing.assert_allclose(cmp["throughput_ratio"] * cmp["step_time_ratio"], 1.0, rtol=1e-9)
  upd = cmp["update_only"]
  assert upd["rounds"] == 2 and upd["num_params"] > 0
  for name in ("sgd_agc", "sgd"):
    assert len(upd[name]["times_s"]) == 2 and upd[name]["min_s"] > 0
  np.testing.assert_allclose(
      cmp["agc_overhead_fraction_from_update_min"],
      (upd["sgd_agc"]["min_s"] - upd["sgd"]["min_s"]) / sgd["step_time_median_s"])
  assert "agc_over_sgd" in stdout


def test_eval_mode_flops_and_compile_only(tmp_path):
  data, _ = _run_script(
      tmp_path, "--sweep", "--model=nf_demo_tiny", "--sweep_modes=eval", "--sweep_batches=1,3",
      "--image_size=16", "--num_classes=10", "--compile_only")
  assert [r["batch"] for r in data["results"]] == [1, 3]
  macs = flops.count_macs("nf_demo_tiny", 16, 10)
  for r in data["results"]:
    assert r["mode"] == "eval" and r["optimizer"] is None
    assert r["compile_s"] > 0 and r["lower_s"] > 0
    assert r["first_step_s"] is None and "images_per_s" not in r  # compile only: no steps
  # No steps ran, so no peak was measured either.
  assert "peak" not in data
  cfg = benchmark.BenchConfig(model="nf_demo_tiny", mode="eval", batch=3, image_size=16,
                                 num_classes=10)
  assert benchmark.step_flops(cfg) == 2 * macs * 3


def test_train_step_is_the_engines():
  """The timed step is the engine's: one step from the same state gives the same state."""
  cfg = benchmark.BenchConfig(model="nf_demo_tiny", batch=4, image_size=16, num_classes=10)
  step = benchmark.build_step(cfg)
  state, batch = parallel.unreplicate(step.make_args())
  runner = benchmark.Runner(step)  # compiled from the abstract arguments; runs one step
  got = parallel.unreplicate(runner.args[0])

  # The step train.build_run makes for a config with the recipe's label smoothing.
  config = ml_collections.ConfigDict(dict(
      model="nf_demo_tiny", compute_dtype="float32", label_smoothing=0.1, ema_decay=None,
      optimizer=dict(name="sgd_agc")))
  tx = optim.build_optimizer(config.optimizer, batch_size=4, steps_per_epoch=1000,
                             total_steps=100_000)
  devices = jax.local_devices()[:1]
  train_step = parallel.make_train_step(
      steps.make_grad_fn(steps.make_forward(config, 10), config),
      steps.make_update_fn(tx, config), devices=devices)
  want, _ = train_step(parallel.replicate(state, devices),
                       parallel.shard(jax.tree.map(lambda x: x[None], batch), devices))
  want = parallel.unreplicate(want)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert int(got["step"]) == 1 and int(got["nonfinite_count"]) == 0
  # The gradient reached the optimizer: the momentum buffer is no longer zero.
  assert any(np.any(x != 0) for x in jax.tree.leaves(got["opt_state"]) if np.ndim(x) > 1)


def test_ratio_uses_interleaved_rounds():
  a = dict(name="a", images_per_s=2.0, step_time_median_s=4.0, step_times_s=[4.0, 6.0, 3.0])
  b = dict(name="b", images_per_s=4.0, step_time_median_s=2.0, step_times_s=[1.0, 3.0, 2.0])
  r = benchmark.ratio([a, b], 0, 1, "x")
  assert r["throughput_ratio"] == 0.5 and r["step_time_ratio"] == 2.0
  assert r["step_time_ratio_per_round_median"] == 2.0  # median of (4, 2, 1.5)


def test_bad_configs_have_clear_errors():
  with pytest.raises(ValueError, match="mode must be one of"):
    benchmark.BenchConfig(mode="infer").validate()
  with pytest.raises(ValueError, match="precision"):
    benchmark.BenchConfig(precision="fp8").validate()
  with pytest.raises(ValueError, match="float32 like the engine's evaluation"):
    benchmark.BenchConfig(mode="eval", precision="bfloat16").validate()
  with pytest.raises(ValueError, match="grouped_conv_impl"):
    benchmark.BenchConfig(grouped_conv_impl="fast").validate()
  with pytest.raises(ValueError, match="Unknown model"):
    benchmark.BenchConfig(model="nfnet_f99").validate()
  with pytest.raises(ValueError, match="no grouped_conv_impl argument"):
    benchmark.build_step(benchmark.BenchConfig(
        model="nf_demo_tiny", grouped_conv_impl="split", image_size=16, num_classes=10))


def test_timm_models_come_from_the_registry():
  assert benchmark.TIMM_MODELS["nfnet_f0"] == "dm_nfnet_f0"
  assert benchmark.TIMM_MODELS["eca_nfnet_l0"] == "eca_nfnet_l0"
  assert "nf_demo_tiny" not in benchmark.TIMM_MODELS


def test_matmul_peak_and_memory_report():
  peak = benchmark.matmul_peak(n=128, repeats=2)
  assert peak["dtype"] == "float32" and peak["flops_per_s"] > 0  # CPU default
  mem = benchmark.memory_report()
  assert mem["peak_memory_bytes"] > 0 and "RSS" in mem["peak_memory_source"]


def _block_outputs_and_grads(spec, impl, x, params=None):
  def f(x):
    return nfnet.NFBlock(spec, grouped_conv_impl=impl, name="blk")(x, is_training=False)[0]
  t = hk.transform(f)
  if params is None:
    params = t.init(jax.random.PRNGKey(0), x)
    # skip_gain starts at 0, which would hide the residual branch: make it count.
    params = jax.tree_util.tree_map_with_path(
        lambda kp, v: jnp.full_like(v, 0.7) if "skip_gain" in str(kp[-1]) else v, params)
  loss = lambda p, x: jnp.sum(jnp.sin(t.apply(p, None, x)))
  out = jax.jit(t.apply)(params, None, x)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  return params, out, grads


def _assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
  """Each tensor divided by its largest |entry|, then compared with rtol/atol."""
  for (path, u), v in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    scale = float(jnp.max(jnp.abs(u))) + 1e-12
    np.testing.assert_allclose(np.asarray(v) / scale, np.asarray(u) / scale, rtol=rtol,
                               atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("stride,groups", [(2, 2), (1, 3)])
def test_nfblock_native_and_split_identical(stride, groups):
  gw = 4
  spec = nfnet.BlockSpec(index=1, stage=1, in_ch=8, out_ch=2 * groups * gw, stride=stride,
                         bottleneck_ch=groups * gw, groups=groups, beta=0.9,
                         stochdepth_rate=0.0)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 8))
  params, out_n, grads_n = _block_outputs_and_grads(spec, "native", x)
  _, out_s, grads_s = _block_outputs_and_grads(spec, "split", x, params)
  assert out_n.shape == (2, 8 // stride, 8 // stride, 2 * groups * gw)
  _assert_trees_close(out_n, out_s)
  _assert_trees_close(grads_n, grads_s)


@pytest.mark.slow
def test_tiny_nfnet_native_and_split_identical():
  """A whole (narrow) NFNet-F0: grouped convs with 2 and 6 groups, strided and not."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))

  def make(impl):
    def f(x):
      return nfnet.NFNet(10, variant="F0", width=0.125, group_width=16, drop_rate=0.0,
                         stochdepth_rate=0.0, grouped_conv_impl=impl)(x, is_training=True)
    return hk.transform(f)

  groups = {s.groups for s in nfnet.block_config("F0", width=0.125, group_width=16)}
  assert groups == {1, 2, 6}
  params = make("native").init(jax.random.PRNGKey(1), x)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, v: jnp.full_like(v, 0.7) if "skip_gain" in str(kp[-1]) else v, params)
  results = {}
  for impl in ("native", "split"):
    t = make(impl)
    loss = lambda p: jnp.sum(jnp.sin(t.apply(p, None, x)["logits"]))
    results[impl] = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(results["split"][0], results["native"][0], rtol=RTOL)
  # Scalar gradients (skip gains) sum ~1e5 products with cancellation through 12 blocks: the
  # two summation orders differ by up to ~5e-5 relative (observed 4.8e-5), so 2e-4 here.
  _assert_trees_close(results["native"][1], results["split"][1], rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_script_tiny_nfnet_f0_train(tmp_path):
  data, _ = _run_script(
      tmp_path, "--model=nfnet_f0", "--model_kw=width=0.125", "--model_kw=group_width=16",
      "--image_size=32", "--batch=2", "--steps=2", "--warmup=0", "--peak_n=256",
      "--compare=impl")
  native, split = data["results"]
  assert (native["grouped_conv_resolved"], split["grouped_conv_resolved"]) == ("native", "split")
  for r in (native, split):
    _check_result(r, batch=2, steps=2)
  assert data["comparisons"][0]["kind"] == "split_over_native"


@pytest.mark.slow
def test_input_pipeline_benchmark(tmp_path):
  r = benchmark.input_pipeline_benchmark(num_images=64, batches=2, batch=4, image_size=64,
                                            data_dir=str(tmp_path), log=lambda s: None)
  assert r["output_shapes"] == {"images": [1, 4, 64, 64, 3], "labels": [1, 4, 1000]}
  assert r["images_per_s"] > 0 and len(r["batch_times_s"]) == 2
  np.testing.assert_allclose(r["images_per_s_per_core"] * r["cpu_cores"], r["images_per_s"])


def test_xla_options_reach_the_compiler_per_config():
  """``BenchConfig.xla_options`` compile one variant with XLA options (issue 22: YNNPACK fusion
  types side by side in one process): same outputs, the option in the name, bad values
  rejected by XLA itself."""
  ynn = "xla_cpu_experimental_ynn_fusion_type"
  base = dict(model="nf_demo_tiny", mode="eval", batch=2, image_size=16, num_classes=10)
  plain = benchmark.Runner(benchmark.build_step(benchmark.BenchConfig(**base)))
  cfg = benchmark.BenchConfig(xla_options={ynn: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}, **base)
  assert cfg.name.endswith(f"{ynn}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
  other = benchmark.Runner(benchmark.build_step(cfg))
  assert other.result(None, None)["xla_options"] == cfg.xla_options
  if jax.default_backend() == "cpu":  # Convolutions leave YNNPACK: a different program.
    assert plain.compiled.as_text() != other.compiled.as_text()
  np.testing.assert_allclose(other.compiled(*plain.args), plain.compiled(*plain.args),
                             rtol=1e-5, atol=1e-6)
  bad = benchmark.BenchConfig(xla_options={ynn: "NO_SUCH_TYPE"}, **base)
  with pytest.raises(Exception, match=ynn):
    benchmark.Runner(benchmark.build_step(bad), compile_only=True)
