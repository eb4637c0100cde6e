"""The rooms of the package and the one direction of their imports (docs/layout.md).

Reads every module's imports (module level and inside functions) with ``ast`` and checks them
against the room map, so a new import that points upwards fails here, not in review. Importing
``nfnets_jax.a.b`` first runs the package ``nfnets_jax.a``'s ``__init__``: those edges count
too (except for a module inside that package, whose ``__init__`` is already running).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nfnets_jax"

# room -> rooms it may import. A room is a sub-package or a top-level module of nfnets_jax.
_BELOW_ALL = {"errors", "constants"}
ALLOWED = {
    "errors": set(),
    "constants": set(),
    "layers": _BELOW_ALL,
    "optim": _BELOW_ALL,
    "data": _BELOW_ALL,
    "models": {"layers"} | _BELOW_ALL,
    "weights": {"models", "layers"} | _BELOW_ALL,
    "pretrained": {"weights", "models", "layers", "data"} | _BELOW_ALL,
    "engine": {"pretrained", "weights", "models", "layers", "optim", "data"} | _BELOW_ALL,
    "research": {"engine", "pretrained", "weights", "models", "layers", "optim", "data"} |
                _BELOW_ALL,
    "cli": _BELOW_ALL,
    "predict": {"pretrained", "data"} | _BELOW_ALL,
    "__init__": {"optim"},
}
# Packages that may be imported inside a function body, and only these: heavy or optional
# (``nfnets_jax.data`` imports TensorFlow).
HEAVY = {"tensorflow", "tensorflow_datasets", "torch", "timm", "matplotlib", "PIL", "sklearn",
         "nfnets_jax.data"}


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


def _packages_run_by(module: str, importer: str):
  """The package ``__init__`` modules that importing ``module`` runs for ``importer``."""
  parts = module.split(".")
  for i in range(1, len(parts)):
    package = ".".join(parts[:i])
    if not (importer == package or importer.startswith(package + ".")):
      yield package


def _graph():
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  packages = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for imported in _imports(path):
      # Resolve `pkg.name` to the module when `name` is a module, else to `pkg`.
      target = imported if imported in modules else imported.rsplit(".", 1)[0]
      if target in modules:
        targets.add(target)
        targets.update(p for p in _packages_run_by(target, name) if p in packages)
    targets.discard(name)
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


def test_package_init_edges_are_counted():
  graph = _graph()
  # engine/train.py imports nfnets_jax.data.preprocessing: data/__init__ runs first.
  assert "nfnets_jax.data" in graph["nfnets_jax.engine.train"]
  # A module inside a package does not re-run its own package's __init__.
  assert "nfnets_jax.engine" not in graph["nfnets_jax.engine.train"]


def test_pretrained_and_weights_import_nothing_from_the_engine():
  graph = _graph()
  for module, targets in graph.items():
    if _room(module) in ("pretrained", "weights"):
      assert not {t for t in targets if _room(t) == "engine"}, module


def _python_files():
  for folder in ("nfnets_jax", "scripts", "experiments"):
    yield from (ROOT / folder).rglob("*.py")


def test_no_module_uses_another_modules_private_names():
  bad = []
  for path in _python_files():
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nfnets_jax"):
        for alias in node.names:
          if alias.name.startswith("_") and not alias.name.startswith("__"):
            bad.append(f"{path.relative_to(ROOT)}: from {node.module} import {alias.name}")
          aliases.add(alias.asname or alias.name)
      elif isinstance(node, ast.Import):
        for alias in node.names:
          if alias.name.startswith("nfnets_jax"):
            aliases.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_imports_inside_functions_are_only_for_heavy_optional_packages():
  inside = []
  for path in PACKAGE.rglob("*.py"):
    for func in ast.walk(ast.parse(path.read_text())):
      if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for node in ast.walk(func):
          if isinstance(node, ast.Import):
            inside += [(path, node.lineno, a.name) for a in node.names]
          elif isinstance(node, ast.ImportFrom):
            inside.append((path, node.lineno, node.module or ""))
  light = [f"{p.relative_to(ROOT)}:{line}: {name}" for p, line, name in inside
           if name.split(".")[0] not in HEAVY and not name.startswith("nfnets_jax.data")]
  assert not light, "import these at module level:\n" + "\n".join(light)
  # 20 at issue 24; research/pipeline_benchmark.py adds 9 (TensorFlow for ours; torch, timm and
  # PIL for timm's loader, which is optional), each loaded only when that side runs.
  assert len(inside) <= 29, [f"{p.name}:{line} {n}" for p, line, n in inside]


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
  from nfnets_jax.models import create, get_info, list_models, transform  # noqa: F401
  from nfnets_jax.engine import checkpoint as old_path  # noqa: F401  (moved to weights/)
  from nfnets_jax.weights import checkpoint
  assert old_path is checkpoint
  from nfnets_jax.engine import evaluate_checkpoint, train_and_evaluate  # noqa: F401
  assert callable(optim.build_optimizer) and callable(agc.adaptive_grad_clip)
  assert "nfnet_f0" in list_models()
