"""NF-ResNet, NF-RegNet, BN/unnormalized ResNet and NFNet-L: counts, shapes, behaviour."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import layers, models
from nfnets_jax.models import nf_regnet, nf_resnet, nfnet_l, resnet

# Exact parameter counts with 1000 classes (facts section 3 and the brief).
_SLOW_COUNTS = ("nf_regnet_b5", "nf_regnet_b6", "nf_regnet_b7", "nf_regnet_b8",
                "eca_nfnet_l1", "eca_nfnet_l2")
EXACT_COUNTS = [
    ("nf_resnet50", 25_557_048),
    ("nf_seresnet50", 35_635_704),
    ("nf_regnet_b0", 8_595_372),
    ("nf_regnet_b1", 10_019_208),
    ("nf_regnet_b2", 13_785_904),
    ("nf_regnet_b3", 18_136_667),
    ("nf_regnet_b4", 29_315_830),
    ("nf_regnet_b5", 48_707_138),
    ("nf_regnet_b6", 70_045_805),
    ("nf_regnet_b7", 101_743_204),
    ("nf_regnet_b8", 142_314_441),
    ("resnet50_bn", 25_549_352),
    ("nfnet_l0", 35_074_488),
    ("eca_nfnet_l0", 24_143_924),
    ("eca_nfnet_l1", 41_407_728),
    ("eca_nfnet_l2", 56_722_348),
]

# Tiny configurations for real forward passes (10 classes).
TINY = {
    "nf_resnet50": dict(width=0.25, depths=(1, 1, 1, 1)),
    "nf_seresnet50": dict(width=0.25, depths=(1, 1, 1, 1)),
    "nf_regnet_b0": dict(width=0.25, depths=(1, 1, 1, 1), grouped_conv_impl="native"),
    "resnet50_bn": dict(width=0.125, depths=(1, 1, 1, 1)),
    "resnet50_noscale": dict(width=0.125, depths=(1, 1, 1, 1)),
    "resnet50_skipinit": dict(width=0.125, depths=(1, 1, 1, 1)),
    "nfnet_l0": dict(width=0.125, depths=(1, 1, 1, 1), grouped_conv_impl="native"),
    "eca_nfnet_l0": dict(width=0.125, depths=(1, 1, 1, 1), grouped_conv_impl="native"),
}
# Pooled feature width of each tiny model.
TINY_POOL = {"nf_resnet50": 128, "nf_seresnet50": 128, "nf_regnet_b0": 320,
             "resnet50_bn": 256, "resnet50_noscale": 256, "resnet50_skipinit": 256,
             "nfnet_l0": 288, "eca_nfnet_l0": 288}


def _transform(name, num_classes=10, return_metrics=False, **kw):
  def fwd(x, is_training):
    return models.create(name, num_classes, **kw)(x, is_training, return_metrics=return_metrics)
  return hk.transform_with_state(fwd)


def _init_shapes(f, size=64):
  """Parameter/state shapes without allocating or computing anything."""
  return jax.eval_shape(lambda rng, x: f.init(rng, x, True), jax.random.PRNGKey(0),
                        jnp.zeros((1, size, size, 3)))


def _fast(name):
  """Grouped convs traced natively: much cheaper to trace than the CPU 'split' path."""
  grouped = name.startswith(("nf_regnet", "nfnet_l", "eca_nfnet"))
  return dict(grouped_conv_impl="native") if grouped else {}


@pytest.mark.parametrize("name,expected", [
    pytest.param(n, c, marks=pytest.mark.slow) if n in _SLOW_COUNTS else (n, c)
    for n, c in EXACT_COUNTS])
def test_exact_param_counts(name, expected):
  f = _transform(name, 1000, **_fast(name))
  params, _ = _init_shapes(f)
  assert layers.count_params(params) == expected


def test_se_adds_exactly_the_se_linears():
  # SE(ratio 1/4) on C channels: C*C/4 + C/4 + C/4*C + C parameters per block.
  widths = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
  assert sum(c * c // 2 + c // 4 + c for c in widths) == 35_635_704 - 25_557_048


def test_bn_state_is_not_counted_as_params():
  f = _transform("resnet50_bn", 1000)
  params, state = _init_shapes(f)
  # 16 blocks x 3 pre-activation BNs + the final BN, each with a mean and a var EMA.
  assert layers.count_params(params) == 25_549_352
  assert len(state) == 2 * (16 * 3 + 1)
  assert all("batchnorm" in k for k in state)


def _compile_and_run(fn, *args):
  """jit with XLA's backend optimizations off: compiling dominates these tiny runs on CPU."""
  compiled = jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})
  return compiled(*args)


_TINY_CACHE = {}


def _tiny_run(name):
  """One init + train/eval apply of a tiny model on an odd-sized 17x15 input (cached)."""
  if name not in _TINY_CACHE:
    f = _transform(name, return_metrics=True, **TINY[name])

    def run(rng, x):
      params, state = f.init(rng, x, True)
      train_out, new_state = f.apply(params, state, rng, x, True)
      eval_out, eval_state = f.apply(params, state, None, x, False)
      return dict(params=params, state=state, train=train_out, eval=eval_out,
                  new_state=new_state, eval_state=eval_state)

    x = jax.random.normal(jax.random.PRNGKey(1), (4, 17, 15, 3))
    _TINY_CACHE[name] = _compile_and_run(run, jax.random.PRNGKey(0), x)
  return _TINY_CACHE[name]


# The fast set covers each family once; the rest run with the slow tests.
FAST_TINY = ("nf_resnet50", "nf_regnet_b0", "resnet50_bn", "eca_nfnet_l0")


def _maybe_slow(names):
  return [n if n in FAST_TINY else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _maybe_slow(sorted(TINY)))
def test_tiny_forward_shapes_and_metrics(name):
  run = _tiny_run(name)
  for out in (run["train"], run["eval"]):
    assert out["logits"].shape == (4, 10)
    assert out["pool"].shape == (4, TINY_POOL[name])
    assert np.all(np.isfinite(out["logits"]))
    # Four blocks -> three metrics each, same keys for every family.
    keys = {k for k in out if k.startswith("block_")}
    assert keys == {f"block_{i}_{m}" for i in range(4)
                    for m in ("avg_sq_mean", "avg_var", "res_var")}
    assert all(np.isfinite(out[k]) and out[k] >= 0 for k in keys)
  # Submodules are created in constructors: Haiku paths with "/~/".
  assert all("/~/" in path for path in run["params"])


def test_bn_resnet_updates_state_only_in_training():
  run = _tiny_run("resnet50_bn")
  key = "ResNet/~/final_norm/~/batchnorm/~/mean_ema"
  # Haiku's EMA starts at counter 0, hidden 0, average = the init batch's mean.
  assert int(run["state"][key]["counter"]) == 0
  assert int(run["new_state"][key]["counter"]) == 1
  np.testing.assert_array_equal(run["state"][key]["hidden"], 0.0)
  # One step of decay 0.9 on the same batch: hidden = 0.1 * batch mean.
  np.testing.assert_allclose(run["new_state"][key]["hidden"],
                             0.1 * np.asarray(run["state"][key]["average"]),
                             rtol=1e-5, atol=1e-7)
  for path, leaves in run["eval_state"].items():
    for leaf, value in leaves.items():
      np.testing.assert_array_equal(value, run["state"][path][leaf])


def test_bn_resnet_eval_uses_moving_stats():
  f = _transform("resnet50_bn", **TINY["resnet50_bn"])
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 16, 16, 3))
  params, state = _tiny_run("resnet50_bn")["params"], _tiny_run("resnet50_bn")["state"]
  # The classifier starts at zero; give it weights so the logits carry the features.
  params = {**params, "ResNet/~/linear": {
      "w": jnp.ones_like(params["ResNet/~/linear"]["w"]),
      "b": params["ResNet/~/linear"]["b"]}}
  def run(params, state, x):
    logits = lambda xs, tr: f.apply(params, state, None, xs, tr)[0]["logits"][:1]
    return logits(x, False), logits(x[:1], False), logits(x, True), logits(x[:2], True)
  whole, alone, t_whole, t_part = _compile_and_run(run, params, state, x)
  # Eval: each example is independent of the rest of the batch.
  np.testing.assert_allclose(alone, whole, rtol=1e-5, atol=1e-5)
  # Training: batch statistics make it depend on the batch.
  assert not np.allclose(t_part, t_whole, atol=1e-4)


@pytest.mark.slow
def test_unnormalized_resnet_signal_grows_nf_resnet_does_not():
  """Identity-shortcut blocks: unnormalized ResNet adds variance, NF-ResNet (skip gain 0) not."""
  raw = _transform("resnet50_noscale", return_metrics=True, width=0.125, depths=(2, 2, 2, 2))
  nf = _transform("nf_resnet50", return_metrics=True, width=0.25, depths=(2, 2, 2, 2))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 33, 31, 3))

  def run(x):
    outs = []
    for f in (raw, nf):
      params, state = f.init(jax.random.PRNGKey(0), x, False)
      outs.append(f.apply(params, state, None, x, False)[0])
    return outs
  raw_out, nf_out = _compile_and_run(run, x)
  for stage in range(4):
    first, second = 2 * stage, 2 * stage + 1  # second block of a stage: identity shortcut
    assert raw_out[f"block_{second}_avg_var"] > 1.05 * raw_out[f"block_{first}_avg_var"]
    np.testing.assert_allclose(nf_out[f"block_{second}_avg_var"],
                               nf_out[f"block_{first}_avg_var"], rtol=1e-6)
    assert nf_out[f"block_{second}_res_var"] > 0  # the branch exists, it is just gated off


@pytest.mark.slow
def test_skipinit_resnet_is_shortcut_only_at_init():
  run = _tiny_run("resnet50_skipinit")
  gains = [v["skip_gain"] for k, v in run["params"].items() if "skip_gain" in v]
  assert len(gains) == 4 and all(float(g) == 0.0 for g in gains)


@pytest.mark.parametrize("name", [
    "nf_resnet50", pytest.param("nf_regnet_b0", marks=pytest.mark.slow),
    pytest.param("eca_nfnet_l0", marks=pytest.mark.slow)])
def test_dropout_and_stochdepth_only_in_training(name):
  # Residual branches start switched off (skip_gain 0, or the last conv's gain 0 for
  # NFNet-L), so switch them on first.
  f = _transform(name, drop_rate=0.5, stochdepth_rate=0.5, **TINY[name])
  f0 = _transform(name, drop_rate=0.5, stochdepth_rate=0.0, **TINY[name])
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params = {k: {n: (jnp.ones_like(p) if n in ("skip_gain", "gain") else p)
                for n, p in v.items()}
            for k, v in _tiny_run(name)["params"].items()}
  # NF-RegNet's classifier starts at zero: give it weights so dropout shows in the logits.
  fc = [k for k in params if k.count("/~/") == 1 and k.endswith("/~/linear")]
  assert len(fc) == 1
  params[fc[0]] = {**params[fc[0]], "w": jnp.ones_like(params[fc[0]]["w"])}

  def run(params, x):
    k5, k6 = jax.random.PRNGKey(5), jax.random.PRNGKey(6)
    return (f.apply(params, {}, k5, x, False)[0], f.apply(params, {}, k6, x, False)[0],
            f.apply(params, {}, k5, x, True)[0], f.apply(params, {}, k6, x, True)[0],
            f0.apply(params, {}, k5, x, True)[0])
  e1, e2, t1, t2, t0 = _compile_and_run(run, params, x)
  np.testing.assert_array_equal(e1["logits"], e2["logits"])
  assert not np.allclose(t1["pool"], t2["pool"])  # stochastic depth (before the pool)
  # Dropout: some pooled features of the classifier input are zeroed, logits change.
  np.testing.assert_allclose(t0["pool"], e1["pool"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(t0["logits"], e1["logits"])
  with pytest.raises(ValueError):  # training needs an rng for the masks
    jax.eval_shape(lambda p, x: f.apply(p, {}, None, x, True), params, x)


def test_stochastic_depth_drops_whole_residual_per_example():
  """Each example's output is either with or without the residual branch (no rescale)."""
  def fwd(x, is_training, rate):
    block = nf_resnet.NFResBlock(8, 8, stochdepth_rate=rate,
                                 activation=layers.scaled_activation("relu"),
                                 skipinit_gain=jnp.ones)
    return block(x, is_training)[0]
  f = hk.transform(fwd)
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 8))

  def run(x):
    params = f.init(jax.random.PRNGKey(1), x, False, 0.0)
    return (f.apply(params, None, x, False, 0.5),
            f.apply(params, jax.random.PRNGKey(2), x, True, 0.5))
  full, out = _compile_and_run(run, x)
  dropped = x  # no projection: the shortcut is x itself
  is_full = np.all(np.isclose(out, full, atol=1e-6), axis=(1, 2, 3))
  is_dropped = np.all(np.isclose(out, dropped, atol=1e-6), axis=(1, 2, 3))
  assert np.all(is_full ^ is_dropped)
  assert 10 < is_dropped.sum() < 54


def test_block_schedule_matches_nfnet_rules():
  sched = nf_resnet.nf_betas_and_rates((1, 2, 6, 3), 0.2, 0.1)
  betas = [b for b, _ in sched]
  np.testing.assert_allclose(
      betas, [1.0, 0.980581, 0.980581, 0.962250, 0.980581, 0.962250, 0.944911, 0.928477,
              0.912871, 0.898027, 0.980581, 0.962250], atol=1e-6)
  np.testing.assert_allclose([r for _, r in sched], [0.1 * i / 12 for i in range(12)])
  model = hk.transform(lambda: [b.stochdepth_rate for b in nf_regnet.NFRegNet(
      10, stochdepth_rate=0.2).blocks])
  rates = model.apply({}, None)
  np.testing.assert_allclose(rates, [0.2 * i / 16 for i in range(16)])


def test_nf_regnet_b0_layout():
  def build():
    m = nf_regnet.NFRegNet(1000)
    return ([(b.in_ch, b.width, b.groups, b.out_ch) for b in m.blocks], m.final_ch)
  blocks, final_ch = hk.transform(build).apply({}, None)
  assert blocks[0] == (36, 32, 4, 36)  # expansion 1, rounded down to a multiple of 8
  assert blocks[1] == (36, 80, 10, 78)  # 36 * 2.25 = 81 -> 80
  assert [b[3] for b in blocks] == [36] + [78] * 3 + [156] * 6 + [330] * 6
  assert final_ch == 960


def test_nfnet_l_layout_and_zero_gain():
  def build():
    m = nfnet_l.NFNetL(1000, variant="ECA-L0")
    return [(b.width, b.groups, b.attention.kernel_size) for b in m.blocks], m.final_ch
  blocks, final_ch = hk.transform(build).apply({}, None)
  assert blocks[0] == (64, 1, 5) and blocks[1] == (128, 2, 5) and blocks[3] == (384, 6, 5)
  assert final_ch == 2304
  params = _tiny_run("eca_nfnet_l0")["params"]
  for path, p in params.items():
    if path.endswith("/conv2"):
      np.testing.assert_array_equal(p["gain"], 0.0)
    elif "gain" in p:
      np.testing.assert_array_equal(p["gain"], 1.0)


@pytest.mark.parametrize("channels,k", [(64, 3), (256, 5), (512, 5), (1536, 5), (2048, 7),
                                        (8, 3), (32768, 9)])
def test_eca_kernel_size(channels, k):
  assert nfnet_l.eca_kernel_size(channels) == k


def test_eca_matches_numpy_correlate():
  f = hk.transform(lambda x: nfnet_l.ECA(16)(x))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 16))
  params = f.init(jax.random.PRNGKey(1), x)
  gate = np.asarray(f.apply(params, None, x))[:, 0, 0]
  w = np.asarray(params["eca"]["w"], np.float64)
  y = np.asarray(x, np.float64).mean(axis=(1, 2))
  ref = [1 / (1 + np.exp(-np.correlate(np.pad(r, 1), w, mode="valid"))) for r in y]
  np.testing.assert_allclose(gate, np.stack(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["nf_resnet50", pytest.param("eca_nfnet_l0",
                                                                marks=pytest.mark.slow)])
def test_bfloat16_forward(name):
  f = _transform(name, **TINY[name])
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 17, 15, 3)).astype(jnp.bfloat16)
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _tiny_run(name)["params"])
  out = _compile_and_run(lambda p, x: f.apply(p, {}, None, x, False)[0], params, x)
  assert out["logits"].dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out["logits"], np.float32)))


def test_registry_names_and_metadata():
  names = set(models.list_models())
  expected = ({f"nf_resnet{d}" for d in (26, 50, 101, 152, 200, 288, 600)}
              | {"nf_seresnet50"} | {f"nf_regnet_b{i}" for i in range(9)}
              | {"resnet50_bn", "resnet101_bn", "resnet50_noscale", "resnet50_skipinit",
                 "nfnet_l0", "eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2", "eca_nfnet_l3"})
  assert expected <= names
  b0 = models.get_info("nf_regnet_b0")
  assert (b0.train_image_size, b0.test_image_size, b0.drop_rate) == (192, 224, 0.2)
  assert models.get_info("nf_regnet_b8").test_image_size == 672
  assert models.get_info("resnet50_bn").has_state
  assert not models.get_info("nf_resnet50").has_state
  with pytest.raises(ValueError, match="Known models:.*nf_regnet_b0"):
    models.get_info("nf_regnet_b9")


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="Unknown NF-ResNet variant"):
    hk.transform(lambda: nf_resnet.NFResNet(10, variant="ResNet51")).init(None)
  with pytest.raises(ValueError, match="normalization"):
    hk.transform(lambda: resnet.ResNet(10, normalization="layernorm")).init(None)
  with pytest.raises(ValueError, match="rank 4"):
    f = _transform("nf_resnet50", **TINY["nf_resnet50"])
    f.init(jax.random.PRNGKey(0), jnp.zeros((8, 8, 3)), False)


def test_parameter_counts_of_nf_resnet_depths():
  # Depth changes only add blocks: NF-ResNet-101 = 50 + 17 identity blocks of width 1024.
  def block(c):
    w = c // 4
    return (c * w + 2 * w) + (9 * w * w + 2 * w) + (w * c + 2 * c) + 1
  f = _transform("nf_resnet101", 1000)
  params, _ = _init_shapes(f)
  assert layers.count_params(params) == 25_557_048 + 17 * block(1024)
