"""The layout holds: imports run one way between dlrun's packages, functions stay short.

Every module of the installed package is parsed (ast, nothing imported), with every
import in it: at the top, inside functions, under ``if TYPE_CHECKING``, relative ones, and
``importlib.import_module("...")`` with a constant name. The rules (DESIGN.md, "Layout"):

* ``ops`` imports no other dlrun package; ``datasets`` only ``ops``; ``engine`` only
  ``ops`` and ``datasets``; ``cluster`` only those three; ``cli`` anything.
* ``dlrun.errors`` may be imported by every module, and imports nothing of dlrun.
* The root package re-exports the public surface lazily: ``import dlrun`` (then
  ``dl.anything``) reaches everything, so only ``cli`` and the root's own modules may;
  ``from dlrun import Sequential`` reaches the module the name is re-exported from; the
  root's plain attributes (``__version__``) are fine anywhere.
* One exception, :data:`ALLOWED_UPWARD`: ``Model.fit(workers=N)`` reaches ``dlrun.cluster``
  through one lazy import, in the one method it hands the work to
  (``Model._fit_distributed``), in one import statement.

Also: no function over :data:`MAX_FUNCTION_LINES` lines in the package (tests excluded),
no star import, no module-level ``__getattr__`` in ``engine/layers`` (the registry is
explicit).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import dlrun

ROOT = Path(dlrun.__file__).resolve().parent
# each top-level package's rank: a package may import those ranked below it, and itself
RANKS = {"ops": 1, "datasets": 2, "engine": 3, "cluster": 4, "cli": 5}
PACKAGES = tuple(RANKS)
# the root's own packages: Keras' module paths, re-exporting the engine's names
KERAS_PATHS = {"layers", "utils"}
ERRORS = "dlrun.errors"
# (file, enclosing function, imported package): the single import allowed to run upwards
ALLOWED_UPWARD = {("engine/models/model.py", "Model._fit_distributed", "cluster")}
MAX_FUNCTION_LINES = 80
NOT_PACKAGE = {"tests", "__pycache__"}


@dataclass(frozen=True)
class Import:
    path: str            # of the importing file, relative to the package root
    line: int
    function: str        # enclosing function's qualified name, "" at module level
    target: str          # the dotted module imported (for `from x import y`: x.y or x)
    text: str            # the import as written, for messages


def package_files() -> list[Path]:
    """Every .py file of the package: the root's and each sub-package's (an __init__.py
    marks a package), never the tests."""
    files, todo = [], [ROOT]
    while todo:
        folder = todo.pop()
        files += sorted(folder.glob("*.py"))
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and sub.name not in NOT_PACKAGE and (sub / "__init__.py").exists():
                todo.append(sub)
    return files


def module_name(path: Path) -> str:
    """``dlrun.engine.core.plan`` for engine/core/plan.py, ``dlrun.cli`` for its __init__."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["dlrun", *parts])


def root_exports() -> dict[str, str]:
    """The root's lazy re-exports, ``{name: module}``, read from its ``_EXPORTS`` literal."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "_EXPORTS" and node.value is not None:
            return {name: module for name, (module, _) in ast.literal_eval(node.value).items()}
    return {}


def resolve_from(module: str, is_package: bool, level: int, base: str | None) -> str:
    """The absolute module of ``from <level dots><base> import ...`` in ``module``."""
    if level == 0:
        return base or ""
    parts = module.split(".")
    parts = parts if is_package else parts[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([base] if base else []))


def from_target(base: str, name: str, exports: dict[str, str]) -> str:
    """What ``from base import name`` reaches: a sub-module, a root re-export, or base."""
    if base != "dlrun":
        return base
    if name in exports:
        return exports[name]
    if (ROOT / f"{name}.py").exists() or (ROOT / name / "__init__.py").exists():
        return f"dlrun.{name}"
    return "dlrun.<attribute>"       # a plain attribute of the root, such as __version__


class ImportCollector(ast.NodeVisitor):
    """Every dlrun import in one module, with the function it sits in."""

    def __init__(self, path: Path, exports: dict[str, str]):
        self.rel = path.relative_to(ROOT).as_posix()
        self.module = module_name(path)
        self.is_package = path.name == "__init__.py"
        self.exports = exports
        self.scope: list[str] = []
        self.found: list[Import] = []

    def add(self, node: ast.AST, target: str) -> None:
        if target != "dlrun" and not target.startswith("dlrun."):
            return
        found = Import(self.rel, node.lineno, ".".join(self.scope), target, ast.unparse(node))
        if found not in self.found:      # `from x import a, b` is one import of x
            self.found.append(found)

    def visit_scope(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_scope

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = resolve_from(self.module, self.is_package, node.level, node.module)
        for alias in node.names:
            self.add(node, from_target(base, alias.name, self.exports))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if (name in ("import_module", "__import__") and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            self.add(node, node.args[0].value)
        self.generic_visit(node)


def imports_of(path: Path, exports: dict[str, str]) -> list[Import]:
    collector = ImportCollector(path, exports)
    collector.visit(ast.parse(path.read_text(), filename=str(path)))
    return collector.found


def top_package(module: str) -> str:
    """``engine`` for dlrun.engine.core.plan; ``errors``; ``root`` for dlrun and the root's
    other modules; ``attribute`` for a plain attribute of the root."""
    if module == "dlrun.<attribute>":
        return "attribute"
    parts = module.split(".")
    # the root's own modules and packages (the Keras paths: dlrun.layers.core, dlrun.utils)
    if len(parts) == 1 or (parts[1] not in RANKS and module != ERRORS):
        return "root"
    return "errors" if module == ERRORS else parts[1]


def allowed(importer: str, target: str) -> bool:
    """Whether a module of package ``importer`` may import one of package ``target``."""
    if importer == "root" or target == "attribute":
        return True
    if importer == "errors":
        return False
    if target == "errors":
        return True
    if target == "root":
        return importer == "cli"
    return RANKS[target] <= RANKS[importer]


def layering_violations(imports: list[Import]) -> list[str]:
    """A line per import that breaks the rules; the allowed upward import is excused once."""
    problems, excused = [], set()
    for imp in imports:
        importer = top_package(module_name(ROOT / imp.path))
        target = top_package(imp.target)
        if allowed(importer, target):
            continue
        key = (imp.path, imp.function, target)
        if key in ALLOWED_UPWARD and key not in excused:
            excused.add(key)
            continue
        where = f" (in {imp.function})" if imp.function else ""
        rule = ("may import only dlrun.errors" if importer == "errors" else
                f"may import only {', '.join(p for p in PACKAGES if RANKS[p] < RANKS[importer])}"
                f"{', ' if RANKS[importer] > 1 else ''}dlrun.errors and itself")
        if (imp.path, imp.function, target) in ALLOWED_UPWARD:
            rule += "; its one allowed lazy import is taken by an earlier statement"
        problems.append(f"{imp.path}:{imp.line}{where}: `{imp.text}` reaches {imp.target}; "
                        f"{importer} {rule}")
    return problems


@pytest.fixture(scope="module")
def files() -> list[Path]:
    return package_files()


@pytest.fixture(scope="module")
def all_imports(files) -> list[Import]:
    exports = root_exports()
    return [imp for path in files for imp in imports_of(path, exports)]


def test_the_walk_sees_every_package(files):
    found = {path.relative_to(ROOT).parts[0] for path in files if path.parent != ROOT}
    assert found == set(PACKAGES) | KERAS_PATHS, f"packages found under {ROOT}: {sorted(found)}"
    assert not any("tests" in path.relative_to(ROOT).parts for path in files)
    assert len(files) > 60, f"only {len(files)} modules found under {ROOT}"


def test_imports_run_one_way(all_imports):
    problems = layering_violations(all_imports)
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_the_one_upward_import_is_lazy_and_in_fit(all_imports):
    """``Model.fit(workers=N)`` may reach ``dlrun.cluster``; nothing else in engine may,
    and at module level nothing at all (that would make every import of engine load Ray)."""
    upward = [imp for imp in all_imports
              if top_package(module_name(ROOT / imp.path)) in ("ops", "datasets", "engine")
              and top_package(imp.target) == "cluster"]
    for imp in upward:
        assert imp.function, f"{imp.path}:{imp.line}: `{imp.text}` at module level"
    assert len(upward) <= 1, "more than one import reaches dlrun.cluster from below:\n" + "\n".join(
        f"{imp.path}:{imp.line} (in {imp.function}): `{imp.text}`" for imp in upward)


def test_no_function_is_longer_than_80_lines(files):
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append((lines, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them by concern):\n" + \
        "\n".join(f"{where}: {n} lines" for n, where in sorted(long, reverse=True))


def test_no_star_imports(files):
    tests = sorted((ROOT / "tests").rglob("*.py")) if (ROOT / "tests").is_dir() else []
    stars = [f"{path.relative_to(ROOT)}:{node.lineno}: `{ast.unparse(node)}`"
             for path in files + tests
             for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
             if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)]
    assert not stars, "star imports (import the names you use):\n" + "\n".join(stars)


def test_layers_have_no_module_getattr(files):
    layers = [path for path in files if path.relative_to(ROOT).parts[:2] == ("engine", "layers")]
    assert layers, "no modules found in engine/layers"
    hooks = [f"{path.relative_to(ROOT)}:{node.lineno}"
             for path in layers for node in ast.parse(path.read_text()).body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and node.name == "__getattr__"]
    assert not hooks, "module-level __getattr__ in engine/layers (list layers in the " \
        "registry explicitly):\n" + "\n".join(hooks)


# -- the checker itself: it must see what it is meant to forbid ---------------------------


def check_source(rel: str, source: str) -> list[str]:
    """The layering problems of ``source`` as if it were the package's file ``rel``."""
    collector = ImportCollector(ROOT / rel, root_exports())
    collector.visit(ast.parse(source))
    return layering_violations(collector.found)


@pytest.mark.parametrize("rel, source", [
    ("ops/x.py", "from dlrun.engine.core import graph\n"),
    ("ops/x.py", "def f():\n    import dlrun.datasets.store\n"),
    ("datasets/x.py", "from ..engine import losses\n"),
    ("datasets/sub/x.py", "from ...cli import main\n"),
    ("engine/core/x.py", "from dlrun.cluster import averaging\n"),
    ("engine/x.py", "import importlib\nimportlib.import_module('dlrun.cli.main')\n"),
    ("engine/x.py", "import dlrun as dl\n"),
    ("ops/x.py", "from dlrun import Sequential\n"),
    ("engine/x.py", "from dlrun import cluster\n"),
    ("cluster/x.py", "from dlrun.cli import runs\n"),
    ("errors.py", "from dlrun.ops import config\n"),
    ("engine/models/model.py", "class Model:\n    def evaluate(self):\n"
                               "        from dlrun.cluster.driver import x\n"),
    ("engine/models/model.py", "class Model:\n    def _fit_distributed(self):\n"
                               "        from dlrun.cluster.driver import x\n"
                               "        from dlrun.cluster.worker import y\n"),
])
def test_the_checker_reports_imports_against_the_layering(rel, source):
    problems = check_source(rel, source)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{rel}:"), problems


@pytest.mark.parametrize("rel, source", [
    ("ops/x.py", "from dlrun.errors import ConfigError\nfrom dlrun.ops import config\n"),
    ("datasets/x.py", "from . import store\nfrom ..ops import config\n"),
    ("engine/models/x.py", "from dlrun import __version__\nfrom dlrun.datasets import Loader\n"),
    ("cluster/x.py", "from dlrun.engine.models import model\n"),
    ("cli/x.py", "import dlrun as dl\nfrom dlrun.cluster import driver\n"),
    ("engine/models/model.py", "class Model:\n    def _fit_distributed(self):\n"
                               "        from dlrun.cluster.driver import x, y\n"),
])
def test_the_checker_passes_imports_that_follow_it(rel, source):
    assert check_source(rel, source) == []
