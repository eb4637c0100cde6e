"""The docs match the code: README.md and docs/*.md, as a newcomer reads them.

- Every ```python block runs as written (its own subprocess, CPU only), unless the last line
  before it is ``<!-- doc-test: skip (the reason) -->``; every such marker must give a reason.
- Every command line in a code block or inline code (``python experiments/X.py ...``,
  ``scripts/X.py ...``, ``$B ...`` with ``B=...`` set in the same document) uses only flags that
  the script's own ``--helpfull`` (absl) or ``--help`` (argparse) output lists; each script's
  help runs once. ``--config.a.b=...`` overrides must be fields of the named config file's
  ``get_config(arg)``. ``make X`` targets must exist in the Makefile. Flags named in prose
  (inline code outside a command) must exist in some script or config.
- Every repository path (``tests/...``, ``scripts/...``, ``configs/...``, ``nfnets_jax/...``,
  ``engine/x.py`` inside the package) and every relative link (with its ``#anchor``) exists.
- README's room table and docs/layout.md name every module of the package, every experiment
  and every script.
- A measurement has one table: no table row with figures appears twice in the docs.

The help outputs and the snippets run in parallel subprocesses, started once per session.
"""
import concurrent.futures
import functools
import glob
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, NamedTuple, Optional, Set, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SNIPPET_TIMEOUT_S = 240
HELP_TIMEOUT_S = 120

# --config=FILE:ARG arguments documented together with the change that adds them (NFNet
# training without ImageNet): where get_config(ARG) does not accept them yet, the tests skip
# with this reason and check their overrides against get_config(variant) instead.
PENDING_CONFIG_ARGS = {
    ("configs/nfnet.py", "F0,synthetic"): "NFNet training on synthetic data",
    ("configs/nfnet.py", "F0,folder"): "NFNet training on an image folder",
}
# Flags named in prose that belong to no script of ours, with the reason.
FOREIGN_FLAGS = {
    "--xla_llvm_disable_expensive_passes": "an XLA flag (XLA_FLAGS), docs/benchmarks.md",
    "--xla_backend_optimization_level": "an XLA flag (XLA_FLAGS), docs/benchmarks.md",
    "--local-dir": "huggingface-cli's flag, README.md",
}
# Inline examples of mistakes, shown on purpose.
WRONG_ON_PURPOSE = {"--config.optimizer.clipin"}

_MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
_SKIP = re.compile(r"^skip\s*\((.+)\)$")
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")


class Block(NamedTuple):
  path: pathlib.Path
  line: int          # 1-based line of the opening fence
  lang: str
  text: str
  marker: Optional[str]   # the doc-test directive right before the block, if any

  @property
  def where(self) -> str:
    return f"{self.path.relative_to(ROOT)}:{self.line}"


class Doc(NamedTuple):
  path: pathlib.Path
  blocks: Tuple[Block, ...]
  prose: str         # the text with every fenced block blanked (line numbers kept)


def _parse(path: pathlib.Path) -> Doc:
  lines = path.read_text().splitlines()
  prose = list(lines)
  blocks = []
  i = 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    indent, fence, lang = m.groups()
    j = i + 1
    while j < len(lines) and lines[j].strip() != fence:
      j += 1
    body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1:j]]
    k = i - 1
    while k >= 0 and not lines[k].strip():
      k -= 1
    marker = _MARKER.match(lines[k]).group(1) if k >= 0 and _MARKER.match(lines[k]) else None
    blocks.append(Block(path, i + 1, lang.lower(), "\n".join(body) + "\n", marker))
    for n in range(i, min(j + 1, len(lines))):
      prose[n] = ""
    i = j + 1
  return Doc(path, tuple(blocks), "\n".join(prose))


@functools.lru_cache(maxsize=None)
def _docs() -> Tuple[Doc, ...]:
  return tuple(_parse(p) for p in DOCS)


def _python_blocks() -> List[Block]:
  return [b for d in _docs() for b in d.blocks if b.lang in ("python", "py")]


def _skip_reason(block: Block) -> Optional[str]:
  if block.marker is None:
    return None
  m = _SKIP.match(block.marker)
  return m.group(1).strip() if m else None


# ---------------------------------------------------------------------------------------------
# Subprocesses: every script's help and every runnable snippet, started together once.

def _env() -> Dict[str, str]:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  env.pop("XLA_FLAGS", None)  # the snippets see one CPU device, as a newcomer does
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  return env


def _run(args: List[str], timeout: float) -> Tuple[int, str]:
  try:
    proc = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired as e:
    out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    return -1, f"timed out after {timeout} s\n{out}"
  return proc.returncode, proc.stdout + proc.stderr


_ABSL_FLAG_LINE = re.compile(r"^\s+(?:-\?,)?--(\[no\])?([\w.-]+):", re.M)
_ARGPARSE_FLAG = re.compile(r"(?<![\w-])--([A-Za-z][\w-]*)")


def _help(script: str) -> Tuple[str, Set[str]]:
  """(kind, flag names) from ``script --helpfull`` (absl) or else ``script --help``."""
  rc, out = _run([sys.executable, script, "--helpfull"], HELP_TIMEOUT_S)
  if "--[no]helpfull" in out:
    names = set()
    for no, name in _ABSL_FLAG_LINE.findall(out):
      names.add(name)
      if no:
        names.add("no" + name)
    return "absl", names
  rc, out = _run([sys.executable, script, "--help"], HELP_TIMEOUT_S)
  if rc != 0 or "usage:" not in out:
    raise AssertionError(f"{script} --helpfull / --help gave no usable help (rc {rc}):\n"
                         f"{out[-3000:]}")
  return "argparse", set(_ARGPARSE_FLAG.findall(out))


def _run_snippet(block: Block) -> Tuple[int, str]:
  with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(block.text)
  try:
    return _run([sys.executable, f.name], SNIPPET_TIMEOUT_S)
  finally:
    os.unlink(f.name)


@functools.lru_cache(maxsize=None)
def _jobs() -> Dict[Tuple[str, str], concurrent.futures.Future]:
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
  jobs = {}
  for block in _python_blocks():   # the slowest first
    if block.marker is None:
      jobs[("snippet", block.where)] = pool.submit(_run_snippet, block)
  for script in sorted({c.script for c in _commands()}):
    if (ROOT / script).is_file():
      jobs[("help", script)] = pool.submit(_help, script)
  pool.shutdown(wait=False)
  return jobs


# ---------------------------------------------------------------------------------------------
# Command lines.

class Command(NamedTuple):
  where: str
  script: str        # e.g. experiments/train.py
  flags: Tuple[Tuple[str, Optional[str]], ...]   # (name without dashes, value or None)
  text: str


_SCRIPT = re.compile(r"(?<![\w/.-])((?:experiments|scripts)/[\w-]+\.py)(?![\w/])")
_FLAG = re.compile(r"^\[?--([A-Za-z][\w.-]*)(?:=(.*?))?\]?:?$")
_VAR_DEF = re.compile(r"^\s*(?:export\s+)?(\w+)=\"([^\"]*)\"", re.M)


def _command_texts(doc: Doc) -> List[Tuple[str, str]]:
  """(where, one command line) from the code blocks and inline code of ``doc``."""
  rel = doc.path.relative_to(ROOT)
  out = []
  variables = {}
  for block in doc.blocks:
    if block.lang in ("python", "py", "markdown", "md"):
      continue
    variables.update(_VAR_DEF.findall(block.text))
  for block in doc.blocks:
    if block.lang in ("python", "py", "markdown", "md"):
      continue
    text = re.sub(r"\\\n\s*", " ", block.text)
    for n, line in enumerate(text.splitlines()):
      m = re.match(r"^\s*\$\{?(\w+)\}?(\s.*)?$", line)
      if m and m.group(1) in variables:
        line = variables[m.group(1)] + (m.group(2) or "")
      for part in re.split(r";|&&", line):
        out.append((f"{rel}:{block.line} (block line {n + 1})", part))
  for m in re.finditer(r"`([^`]+)`", doc.prose):
    line = doc.prose.count("\n", 0, m.start()) + 1
    out.append((f"{rel}:{line}", " ".join(m.group(1).split())))
  return out


@functools.lru_cache(maxsize=None)
def _commands() -> Tuple[Command, ...]:
  commands = []
  for doc in _docs():
    for where, text in _command_texts(doc):
      m = _SCRIPT.search(text)
      if not m:
        continue
      flags = []
      for token in text[m.end():].split():
        token = token.strip("\"'`,")
        f = _FLAG.match(token)
        if f:
          flags.append((f.group(1), f.group(2)))
      commands.append(Command(where, m.group(1), tuple(flags), text.strip()))
  return tuple(commands)


def _script_help(script: str) -> Tuple[str, Set[str]]:
  return _jobs()[("help", script)].result()


@functools.lru_cache(maxsize=None)
def _config(path: str, arg: Optional[str]):
  """``get_config(arg)`` of ``configs/X.py``, loaded as experiments/train.py loads it."""
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  spec = importlib.util.spec_from_file_location(
      "_doc_config_" + re.sub(r"\W", "_", path), ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def _has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    try:
      if part not in node:
        return False
      node = node[part]
    except TypeError:   # a leaf that is not a ConfigDict
      return False
  return True


def _config_of(command: Command) -> Tuple[Optional[str], Optional[str], Optional[str]]:
  """(config file, arg, note) named by ``--config=FILE[:ARG]`` in ``command``."""
  value = dict(command.flags).get("config")
  if not value:
    return None, None, None
  path, _, arg = value.partition(":")
  arg = arg or None
  note = None
  if arg and "$" in arg:   # a shell loop over variants (F${v}): check against the default
    arg, note = None, f"{value}: shell variable, checked against the default get_config()"
  return path, arg, note


# ---------------------------------------------------------------------------------------------
# Tests.

def _snippet_id(block: Block) -> str:
  return block.where


@pytest.mark.parametrize("block", _python_blocks(), ids=_snippet_id)
def test_python_snippet_runs(block):
  if block.marker is not None:
    reason = _skip_reason(block)
    assert reason, (f"{block.where}: doc-test marker {block.marker!r} is not "
                    "'skip (reason)'")
    pytest.skip(f"{block.where}: {reason}")
  rc, out = _jobs()[("snippet", block.where)].result()
  assert rc == 0, f"{block.where}: the snippet fails as written (rc {rc}):\n{out[-4000:]}"


def test_doc_test_markers_have_reasons_and_precede_python_blocks():
  problems = []
  for doc in _docs():
    marked = {b.line for b in doc.blocks if b.marker is not None}
    for n, line in enumerate(doc.path.read_text().splitlines(), 1):
      m = _MARKER.match(line)
      if not m:
        if "doc-test" in line:
          problems.append(f"{doc.path.name}:{n}: malformed doc-test marker {line.strip()!r}")
        continue
      if not _SKIP.match(m.group(1)) or not _SKIP.match(m.group(1)).group(1).strip():
        problems.append(f"{doc.path.name}:{n}: marker without 'skip (reason)': {line.strip()!r}")
      following = [b for b in doc.blocks if b.line > n]
      if not following or following[0].line not in marked or following[0].lang not in (
          "python", "py"):
        problems.append(f"{doc.path.name}:{n}: marker not right before a ```python block")
  assert not problems, "\n".join(problems)


def test_every_command_line_flag_exists():
  commands = _commands()
  assert len(commands) > 20, "the command-line parser found too few commands"
  problems = []
  for command in commands:
    if not (ROOT / command.script).is_file():
      problems.append(f"{command.where}: {command.script} does not exist: {command.text}")
      continue
    kind, names = _script_help(command.script)
    for name, _ in command.flags:
      if name.startswith("config."):
        if "config" not in names:
          problems.append(f"{command.where}: {command.script} has no --config, so no "
                          f"--{name}: {command.text}")
        continue
      if name not in names:
        problems.append(f"{command.where}: {command.script} ({kind}) has no --{name}: "
                        f"{command.text}")
  assert not problems, "\n".join(problems)


def test_config_arguments_and_overrides_exist():
  problems, pending = [], []
  for command in _commands():
    path, arg, note = _config_of(command)
    overrides = [n[len("config."):] for n, _ in command.flags if n.startswith("config.")]
    if path is None:
      if overrides:
        problems.append(f"{command.where}: --config.* overrides without --config=: "
                        f"{command.text}")
      continue
    if not (ROOT / path).is_file():
      problems.append(f"{command.where}: no config file {path}")
      continue
    try:
      config = _config(path, arg)
    except Exception as e:  # pylint: disable=broad-except
      if (path, arg) not in PENDING_CONFIG_ARGS:
        problems.append(f"{command.where}: {path}:{arg}: get_config fails: {e!r}")
        continue
      pending.append(f"{path}:{arg} ({PENDING_CONFIG_ARGS[path, arg]}): {e}")
      config = _config(path, arg.split(",")[0])
    for field in overrides:
      if not _has_field(config, field):
        problems.append(f"{command.where}: {path}:{arg} has no field {field!r}: "
                        f"{command.text}")
  assert not problems, "\n".join(problems)
  if pending:
    pytest.skip("config arguments not available yet, their overrides checked against the "
                "variant alone: " + "; ".join(sorted(set(pending))))


def test_config_arguments_named_in_the_docs_exist():
  """``configs/X.py:ARG`` anywhere in the docs: ``get_config(ARG)`` accepts it."""
  problems, pending = [], []
  for doc in _docs():
    text = doc.path.read_text()
    for m in re.finditer(r"(?<![\w/])(configs/\w+\.py):([\w+,]+)(?![\w${*])", text):
      path, arg = m.groups()
      try:
        _config(path, arg)
      except Exception as e:  # pylint: disable=broad-except
        if (path, arg) in PENDING_CONFIG_ARGS:
          pending.append(f"{path}:{arg}")
        else:
          line = text.count("\n", 0, m.start()) + 1
          problems.append(f"{doc.path.relative_to(ROOT)}:{line}: {path}:{arg}: {e!r}")
  assert not problems, "\n".join(problems)
  if pending:
    pytest.skip("config arguments not available yet: " + ", ".join(sorted(set(pending))))


def _all_flags() -> Set[str]:
  names = set()
  for script in {c.script for c in _commands()}:
    if (ROOT / script).is_file():
      names |= _script_help(script)[1]
  return names


def _all_config_fields() -> Set[str]:
  fields = set()

  def walk(node, prefix):
    for key in node.keys():
      fields.add(prefix + key)
      try:
        walk(node[key], prefix + key + ".")
      except (AttributeError, TypeError):
        pass

  for path in sorted((ROOT / "configs").glob("*.py")):
    module = _config_module_default(path.relative_to(ROOT).as_posix())
    if module is not None:
      walk(module, "")
  return fields


def _config_module_default(path: str):
  try:
    return _config(path, None)
  except Exception:  # pylint: disable=broad-except  (configs/default.py has no get_config)
    return None


def test_flags_named_in_prose_exist():
  """``--flag`` in inline code outside a command line: some script or config must have it."""
  flags, fields = _all_flags(), _all_config_fields()
  problems = []
  for doc in _docs():
    for m in re.finditer(r"`([^`]+)`", doc.prose):
      span = " ".join(m.group(1).split())
      if _SCRIPT.search(span):
        continue   # a command line: test_every_command_line_flag_exists
      for f in re.finditer(r"(?<![\w-])--([A-Za-z][\w.-]*)", span):
        name = f.group(1).rstrip(".")
        if f"--{name}" in FOREIGN_FLAGS or f"--{name}" in WRONG_ON_PURPOSE:
          continue
        ok = (name[len("config."):] in fields) if name.startswith("config.") else (
            name in flags)
        if not ok:
          line = doc.prose.count("\n", 0, m.start()) + 1
          problems.append(f"{doc.path.relative_to(ROOT)}:{line}: --{name} exists in no "
                          f"script's help nor config: `{span}`")
  assert not problems, "\n".join(problems)


def _make_targets() -> Set[str]:
  targets = set()
  for line in (ROOT / "Makefile").read_text().splitlines():
    m = re.match(r"^([A-Za-z0-9_./$()-][^:=#]*?)\s*:(?!=)", line)
    if m and not line.startswith("\t"):
      targets.update(m.group(1).split())
  return targets


def test_make_targets_exist():
  targets = _make_targets()
  assert {"train", "test", "finetune"} <= targets, targets
  problems = []
  for doc in _docs():
    texts = [b.text for b in doc.blocks if b.lang not in ("python", "py")]
    texts += [m.group(1) for m in re.finditer(r"`([^`]+)`", doc.prose)]
    for text in texts:
      for m in re.finditer(r"(?:^|[\s`;&(])make\s+([\w.-]+)", text):
        if m.group(1) not in targets:
          problems.append(f"{doc.path.relative_to(ROOT)}: `make {m.group(1)}`: no such "
                          f"target in the Makefile")
  assert not problems, "\n".join(problems)


_REPO_PATH = re.compile(
    r"(?<![\w./-])((?:nfnets_jax|tests|scripts|configs|experiments|docs)/[\w./*-]*)")
_ROOM_PATH = re.compile(
    r"(?<![\w./-])((?:engine|models|weights|data|optim|research)/\w+\.py)\b")


def test_paths_named_in_the_docs_exist():
  problems = []
  for doc in _docs():
    rel = doc.path.relative_to(ROOT)
    text = doc.path.read_text()
    for m in _REPO_PATH.finditer(text):
      path = m.group(1).rstrip(".-")
      if not glob.glob(str(ROOT / path)):
        line = text.count("\n", 0, m.start()) + 1
        problems.append(f"{rel}:{line}: {path} does not exist")
    for m in re.finditer(r"(?<![\w./-])(tests/[\w/]+\.py)::(\w+)", text):
      test_file, name = m.groups()
      if (ROOT / test_file).is_file() and not re.search(
          rf"^\s*(async )?def {name}\b|^class {name}\b", (ROOT / test_file).read_text(), re.M):
        line = text.count("\n", 0, m.start()) + 1
        problems.append(f"{rel}:{line}: {test_file} has no {name}")
    for m in _ROOM_PATH.finditer(text):
      if not (ROOT / "nfnets_jax" / m.group(1)).is_file():
        line = text.count("\n", 0, m.start()) + 1
        problems.append(f"{rel}:{line}: nfnets_jax/{m.group(1)} does not exist")
  assert not problems, "\n".join(problems)


def _anchors(path: pathlib.Path) -> Set[str]:
  anchors = set()
  for line in _parse(path).prose.splitlines():
    m = re.match(r"^#+\s+(.*?)\s*#*\s*$", line)
    if m:
      slug = re.sub(r"[^\w\- ]", "", m.group(1).lower().replace("`", "")).replace(" ", "-")
      anchors.add(slug)
  return anchors


def test_relative_links_and_anchors_exist():
  problems = []
  for doc in _docs():
    for m in re.finditer(r"\]\(([^)\s]+)\)", doc.prose):
      target = m.group(1)
      if re.match(r"^[a-z]+:", target):
        continue
      file_part, _, anchor = target.partition("#")
      dest = (doc.path.parent / file_part).resolve() if file_part else doc.path
      where = f"{doc.path.relative_to(ROOT)}: ({target})"
      if not dest.exists():
        problems.append(f"{where}: {file_part} does not exist")
      elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
        problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
  assert not problems, "\n".join(problems)


def _room_rows(path: pathlib.Path) -> List[str]:
  """The rows of the room table(s): tables whose header starts with ``| room |``."""
  rows, inside = [], False
  for line in path.read_text().splitlines():
    if line.startswith("| room |"):
      inside = True
      continue
    if inside and line.startswith("|"):
      rows.append(line)
    else:
      inside = False
  return rows


def test_room_tables_name_every_module_and_script():
  readme_rows = _room_rows(ROOT / "README.md")
  layout = (ROOT / "docs" / "layout.md").read_text()
  rows = readme_rows + _room_rows(ROOT / "docs" / "layout.md")
  assert readme_rows and len(rows) > len(readme_rows), "room tables not found"
  text = "\n".join(readme_rows) + "\n" + layout
  missing = []
  for path in sorted((ROOT / "nfnets_jax").rglob("*.py")):
    parts = path.relative_to(ROOT / "nfnets_jax").parts
    if len(parts) == 1:
      if parts[0] != "__init__.py" and parts[0] not in text:
        missing.append(f"nfnets_jax/{parts[0]}")
      continue
    room, name = parts[0], parts[-1]
    if name == "__init__.py":
      ok = f"`{room}/`" in text or f"`nfnets_jax/{room}/`" in text
    else:
      stem = name[:-3]
      room_rows = [r for r in rows if re.match(rf"^\|\s*`(nfnets_jax/)?{room}/`", r)]
      ok = f"{room}/{name}" in text or any(
          re.search(rf"`{stem}(\.py)?`|(?<![\w/]){re.escape(name)}", r) for r in room_rows)
    if not ok:
      missing.append(path.relative_to(ROOT).as_posix())
  for folder in ("experiments", "scripts"):
    for path in sorted((ROOT / folder).iterdir()):
      if path.is_file() and not path.name.startswith(".") and path.suffix in (".py", ".sh"):
        if path.name not in text:
          missing.append(path.relative_to(ROOT).as_posix())
  assert not missing, ("not named in README.md's room table nor docs/layout.md: "
                       + ", ".join(missing))


def test_a_measurement_has_one_table():
  """No table row with figures appears twice: one table per measurement, linked elsewhere."""
  seen: Dict[str, List[str]] = {}
  for doc in _docs():
    lines = [ln.strip() for ln in doc.prose.splitlines()]
    for n, line in enumerate(lines):
      if not line.startswith("|") or re.match(r"^\|[\s:|-]+\|?$", line):
        continue
      is_header = n + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|?$", lines[n + 1])
      if is_header or not re.search(r"\d", line):
        continue
      key = " ".join(line.split())
      seen.setdefault(key, []).append(f"{doc.path.relative_to(ROOT)}:{n + 1}")
  repeated = {row: where for row, where in seen.items() if len(where) > 1}
  assert not repeated, "\n".join(f"{', '.join(w)}: {r}" for r, w in repeated.items())
