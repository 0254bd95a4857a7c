"""The package's import structure: no circles, no upward imports, no private names across modules.

Layers, bottom to top (a module may import its own layer and the ones below):
common, runtime, data, models, methods, config_checks.py, config.py, run_spec.py, train,
report, tools, campaign (pipeline, plans, Slurm, training schemes), api.py (the Python API),
main.py. config.py and run_spec.py (the config validated and parsed into typed values) sit
below train/ because every run resolves its config; train/ holds the run-directory format
(workdir.py, results.py) that report/ and tools/ read.
Plug-ins (methods, model families, dataset sources, training schemes) are found with
importlib by their registries: those are not static imports and are not counted (config.py
finds the schemes' config fields that way; the schemes import config, never the reverse).
"""

import ast
import os
import re

from conftest import REPO

PACKAGE = os.path.join(REPO, "kd_research")
LAYERS = ("common", "runtime", "data", "models", "methods", "config_checks", "config",
          "run_spec", "train", "report", "tools", "campaign", "api", "main")


def modules():
  """{dotted name: path} of every module of the package."""
  out = {}
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def imports(path, known):
  """(imported modules, [(alias, attribute, line)] attribute uses of imported modules)."""
  tree = ast.parse(open(path).read())
  found, aliases, private = set(), {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kd_research"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        if full in known:
          found.add(full)
          aliases[alias.asname or alias.name] = full
        else:
          found.add(node.module)
          if alias.name.startswith("_"):
            private.append((node.module, alias.name, node.lineno))
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in known)
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      private.append((aliases[node.value.id], node.attr, node.lineno))
  return found, private


def layer(module):
  parts = module.split(".")
  return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)  # kd_research itself: top


def graph():
  known = modules()
  return {m: imports(path, known) for m, path in known.items()}


def test_every_module_is_in_a_layer():
  for module in modules():
    parts = module.split(".")
    assert len(parts) == 1 or parts[1] in LAYERS, f"{module} is in no layer of {LAYERS}"


def test_no_upward_imports():
  upward = [f"{m} (layer {LAYERS[layer(m)]}) imports {t} (layer {LAYERS[layer(t)]})"
            for m, (targets, _) in graph().items() for t in targets
            if layer(m) < len(LAYERS) and layer(t) > layer(m)]
  assert not upward, "\n".join(upward)


def test_no_private_names_across_modules():
  uses = [f"{m} uses {target}.{name} (line {line})"
          for m, (_, private) in graph().items() for target, name, line in private
          if target != m]
  assert not uses, "\n".join(uses)


def test_no_import_circles():
  edges = {m: {t for t in targets if t != m} for m, (targets, _) in graph().items()}
  state, stack, circles = {}, [], []

  def visit(u):
    state[u] = "open"
    stack.append(u)
    for v in sorted(edges.get(u, ())):
      if state.get(v) == "open":
        circles.append(" -> ".join(stack[stack.index(v):] + [v]))
      elif v not in state:
        visit(v)
    stack.pop()
    state[u] = "done"

  for module in sorted(edges):
    if module not in state:
      visit(module)
  assert not circles, "\n".join(circles)


def test_the_checks_can_fail(tmp_path, monkeypatch):
  """The checker itself: a planted circle, upward import and private use are all found."""
  root = tmp_path / "kd_research"
  for sub in ("common", "train"):
    (root / sub).mkdir(parents=True)
    (root / sub / "__init__.py").write_text("")
  (root / "__init__.py").write_text("")
  (root / "common" / "a.py").write_text("from kd_research.train import b\n")
  (root / "train" / "b.py").write_text("from kd_research.common import a\nx = a._hidden\n")
  monkeypatch.setattr(__import__(__name__), "PACKAGE", str(root))
  monkeypatch.setattr(__import__(__name__), "REPO", str(tmp_path))
  g = graph()
  assert "kd_research.train.b" in g["kd_research.common.a"][0]
  assert layer("kd_research.train.b") > layer("kd_research.common.a")
  assert g["kd_research.train.b"][1] == [("kd_research.common.a", "_hidden", 2)]


# --- the house rules (BUILD.md), as tests ----------------------------------------------------

MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
CHECKED_TREES = ("kd_research", "experiments", "tests")


def python_files():
  """Every .py file of the package, the experiment modules and the tests."""
  for tree in CHECKED_TREES:
    for directory, _, files in os.walk(os.path.join(REPO, tree)):
      yield from (os.path.join(directory, f) for f in sorted(files) if f.endswith(".py"))


def test_no_file_over_400_lines_and_no_function_over_60():
  too_long = []
  for path in python_files():
    source = open(path).read()
    name = os.path.relpath(path, REPO)
    if len(source.splitlines()) > MAX_FILE_LINES:
      too_long.append(f"{name}: {len(source.splitlines())} lines (at most {MAX_FILE_LINES})")
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          too_long.append(f"{name}:{node.lineno} {node.name}: {lines} lines "
                          f"(at most {MAX_FUNCTION_LINES})")
  assert not too_long, "split these by responsibility:\n" + "\n".join(too_long)


def subpackages():
  """The package's subpackages (directories with an __init__.py)."""
  return sorted(d for d in os.listdir(PACKAGE)
                if os.path.exists(os.path.join(PACKAGE, d, "__init__.py")))


def test_every_module_is_named_in_its_subpackage_docstring():
  """Every module of every (nested) subpackage, named in that package's __init__ docstring."""
  unnamed = []
  for directory, _, files in os.walk(PACKAGE):
    init = os.path.join(directory, "__init__.py")
    if directory == PACKAGE or not os.path.exists(init):
      continue
    docstring = ast.get_docstring(ast.parse(open(init).read())) or ""
    for name in sorted(f for f in files if f.endswith(".py") and f != "__init__.py"):
      if not re.search(rf"(?<![\w.]){re.escape(name)}", docstring):
        unnamed.append(os.path.relpath(os.path.join(directory, name), REPO))
  assert not unnamed, "not named in their subpackage's docstring: " + ", ".join(unnamed)


def test_tests_mirror_the_subpackages():
  tests = os.path.join(REPO, "tests")
  test_dirs = sorted(d for d in os.listdir(tests) if os.path.isdir(os.path.join(tests, d))
                     and not d.startswith((".", "__")))
  assert test_dirs == subpackages()


def test_each_method_has_its_own_test_file():
  from kd_research.methods import registry  # pylint: disable=g-import-not-at-top
  modules = sorted({cls.__module__.rsplit(".", 1)[-1] for cls in registry.methods().values()})
  missing = [m for m in modules
             if not os.path.exists(os.path.join(REPO, "tests", "methods", f"test_{m}.py"))]
  assert len(modules) >= 15 and not missing, (
      f"methods without tests/methods/test_NAME.py: {missing}")
