"""The rooms of the package and the one direction of their imports (docs/layout.md).

Reads every module's imports (module level and inside functions) with ``ast`` and checks them
against the room map, so a new import that points upwards fails here, not in review.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nfnets_jax"

# room -> rooms it may import. A room is a sub-package or a top-level module of nfnets_jax.
ALLOWED = {
    "errors": set(),
    "layers": {"errors"},
    "optim": {"errors"},
    "data": {"errors"},
    "models": {"layers", "errors"},
    "weights": {"models", "layers", "errors"},
    "pretrained": {"weights", "models", "layers", "data", "errors", "engine"},
    "engine": {"pretrained", "weights", "models", "layers", "optim", "data", "errors"},
    "research": {"engine", "pretrained", "weights", "models", "layers", "optim", "data",
                 "errors"},
    "cli": {"errors"},
    "predict": {"pretrained", "data", "errors"},
    "__init__": {"optim"},
}
# ``pretrained`` sits between the engine's building blocks and its loops: of the engine it may
# use only the modules below, which in turn never import ``pretrained``.
PRETRAINED_MAY_USE = {"nfnets_jax.engine", "nfnets_jax.engine.checkpoint",
                      "nfnets_jax.engine.steps", "nfnets_jax.engine.parallel"}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("nfnets_jax"):
          yield alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nfnets_jax"):
      for alias in node.names:  # `from nfnets_jax.engine import steps` imports a module
        yield f"{node.module}.{alias.name}"


def _graph():
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for imported in _imports(path):
      # Resolve `pkg.name` to the module when `name` is a module, else to `pkg`.
      target = imported if imported in modules else imported.rsplit(".", 1)[0]
      if target in modules and target != name:
        targets.add(target)
    graph[name] = targets
  return graph


def test_every_room_imports_only_the_rooms_below_it():
  bad = []
  for module, targets in _graph().items():
    room = _room(module)
    assert room in ALLOWED, f"{module}: room {room!r} is missing from the room map"
    for target in targets:
      other = _room(target)
      if other != room and other not in ALLOWED[room]:
        bad.append(f"{module} -> {target}")
  assert not bad, "imports pointing the wrong way:\n" + "\n".join(sorted(bad))


def test_pretrained_uses_only_the_engines_building_blocks():
  graph = _graph()
  used = {t for t in graph["nfnets_jax.pretrained"] if _room(t) == "engine"}
  assert used <= PRETRAINED_MAY_USE, used - PRETRAINED_MAY_USE
  for block in PRETRAINED_MAY_USE & set(graph):
    assert "nfnets_jax.pretrained" not in graph[block], block


def test_module_graph_has_no_cycle():
  graph = _graph()
  state = {}

  def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack + [node, nxt]))
      if nxt not in state:
        visit(nxt, stack + [node])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [])


def test_tests_mirror_the_rooms():
  rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")}
  test_dirs = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}
  assert rooms - {"__pycache__"} <= test_dirs, rooms - test_dirs


def test_public_names_import():
  from nfnets_jax import agc, optim  # noqa: F401  (old path of agc kept working)
  from nfnets_jax.models import NFNet, NFNetL, NFRegNet, NFResNet, ResNet  # noqa: F401
  from nfnets_jax.models import create, get_info, list_models  # noqa: F401
  from nfnets_jax.engine import evaluate_checkpoint, train_and_evaluate  # noqa: F401
  assert callable(optim.build_optimizer) and callable(agc.adaptive_grad_clip)
  assert "nfnet_f0" in list_models()
