"""Import direction inside ``relpsp`` (an AST check), and what ``import relpsp`` may pull in.

Layers, lowest first; a module never imports one of a higher layer (style.md, "A layout to start
from"). ``plots`` is not in the style guide's table: it reads runs written by ``train`` and is only used
by ``commands``, so it sits with ``train``. A module this table does not know makes the test fail, so
that every new module gets a place in the order instead of escaping the rule.

``sim`` is a second, independent implementation used to check trained models: it must not reach the
core maths, directly or through the modules it imports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import relpsp

PACKAGE_DIR = Path(relpsp.__file__).resolve().parent

LAYERS: list[set[str]] = [
    {"_validate", "_types", "_fileio", "config", "arch", "checkpoint", "data"},
    {"core", "kernels"},
    {"autograd"},
    {"functional", "alpha", "window"},
    {"nn"},
    {"models", "sim"},
    {"train", "hw", "export", "plots", "summary"},
    {"commands"},
    {"cli"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}
SIM_FORBIDDEN = ("relpsp.core", "relpsp.autograd", "relpsp.functional", "relpsp.nn", "relpsp.models")
OPTIONAL_HEAVY = ("numba", "matplotlib", "nir", "tqdm", "triton", "PIL")


def _module_files() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _module_files()


def _resolve(name: str) -> str:
    """The longest prefix of ``name`` that is a module of the package (``relpsp`` at worst)."""
    parts = name.split(".")
    while len(parts) > 1 and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def _imports(module: str) -> set[str]:
    """relpsp modules that ``module`` imports anywhere in its source (lazy imports included)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from relpsp import functional` imports the submodule; `from relpsp import x` the package.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        found.update(_resolve(n) for n in names if n == "relpsp" or n.startswith("relpsp."))
    found.discard(module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _level(module: str, seen: frozenset[str] = frozenset()) -> int:
    comp = _component(module)
    if comp:
        return LEVEL[comp]
    # The package root: as high as the highest thing it imports.
    return max((_level(m, seen | {module}) for m in GRAPH[module] if m not in seen), default=0)


def test_every_module_has_a_layer():
    unknown = sorted({_component(m) for m in MODULES if _component(m) and _component(m) not in LEVEL})
    assert not unknown, f"add these relpsp modules to LAYERS in tests/test_layering.py: {unknown}"


def test_the_check_sees_the_package():
    # Guard against a vacuous pass: the scan must find the known modules and their imports.
    assert {"relpsp.functional", "relpsp.autograd", "relpsp.core.dense", "relpsp.nn", "relpsp.models"} <= set(MODULES)
    assert "relpsp.core.dense" in GRAPH["relpsp.functional"]
    assert "relpsp.autograd" in GRAPH["relpsp.functional"]
    assert "relpsp.kernels.cpu_numba" in GRAPH["relpsp.kernels"]  # through importlib.import_module
    assert _level("relpsp") == LEVEL["models"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "relpsp"))
def test_no_upward_import(module):
    if _component(module) not in LEVEL:
        pytest.skip("unknown module: reported by test_every_module_has_a_layer")
    mine = _level(module)
    upward = sorted(f"{m} (layer {_level(m)})" for m in GRAPH[module] if _level(m) > mine)
    assert not upward, f"{module} (layer {mine}) imports higher layers: {upward}"


def test_sim_is_independent_of_the_core():
    sims = [m for m in MODULES if _component(m) == "sim"]
    if not sims:
        pytest.skip("relpsp.sim does not exist yet")
    for start in sims:
        # Static imports, followed transitively (a module imported by sim must not reach the core either).
        seen, stack, parent = {start}, [start], {start: None}
        while stack:
            m = stack.pop()
            for n in GRAPH[m]:
                if n not in seen:
                    seen.add(n)
                    parent[n] = m
                    stack.append(n)
        for bad in sorted(n for n in seen if n == "relpsp" or n.startswith(SIM_FORBIDDEN)):
            chain, m = [], bad
            while m is not None:
                chain.append(m)
                m = parent[m]
            raise AssertionError(f"{start} reaches {bad}: {' <- '.join(chain)}")


def _run_python(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def test_import_relpsp_is_light():
    # torch itself imports tqdm when it is installed (torch.hub), so compare with torch and numpy alone.
    code = (
        "import json, sys, numpy, torch; before = set(sys.modules); import relpsp; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    added = set(json.loads(_run_python(code)))
    assert "relpsp" in added and "relpsp.functional" in added
    heavy = sorted({m.split(".")[0] for m in added} & set(OPTIONAL_HEAVY))
    assert not heavy, f"import relpsp loads optional dependencies: {heavy}"


def test_relpsp_works_without_optional_packages():
    # Make the optional packages look uninstalled (a None entry in sys.modules makes `import` fail and
    # importlib.util.find_spec return None), then build and run a small network with backend="auto",
    # which must fall back to torch: `import relpsp` needs only torch and numpy.
    code = (
        f"import sys\nfor name in {OPTIONAL_HEAVY!r}:\n    sys.modules[name] = None\n"
        "import torch, relpsp\n"
        "torch.manual_seed(0)\n"
        "from relpsp.autograd import resolve_backend\n"
        "m = relpsp.build_model('16-8-3')\n"
        "print(resolve_backend('auto', torch.zeros(1)), tuple(m(torch.rand(2, 16)).shape), end=' ')\n"
        # the windowed neuron's closed form falls back from its numba kernels to torch operations
        "w = relpsp.nn.WindowLinear(16, 3, t_start=1.0, t_end=2.0, weight_norm=True)\n"
        "w(torch.rand(2, 16)).sum().backward()\n"
        "print(relpsp.window._fused_kernels(torch.zeros(1), torch.zeros(1)), tuple(w.gain.grad.shape))\n"
    )
    assert _run_python(code) == "torch (2, 3) None (3,)"


#: the modules of ``relpsp.train``, lowest first (its docstring gives the same order): each imports only
#: the ones before it, so that the package reads from the bottom up and ``loop`` alone ties it together
TRAIN_ORDER = [
    "runtime",
    "distributed",
    "validation",
    "inputs",
    "evaluation",
    "regularisers",
    "checkpointing",
    "run_folder",
    "loop",
]


def test_train_package_modules_import_only_lower_ones():
    found = sorted(m.split(".")[2] for m in MODULES if m.startswith("relpsp.train."))
    assert found == sorted(TRAIN_ORDER), f"add new relpsp.train modules to TRAIN_ORDER: {found}"
    rank = {name: i for i, name in enumerate(TRAIN_ORDER)}
    assert "relpsp.train.distributed" in GRAPH["relpsp.train.evaluation"]  # guard against a vacuous pass
    for name in TRAIN_ORDER:
        own = [m.split(".")[2] for m in GRAPH[f"relpsp.train.{name}"] if m.startswith("relpsp.train.")]
        upward = sorted(m for m in own if rank[m] >= rank[name])
        assert not upward, f"relpsp.train.{name} imports modules at or above its place: {upward}"
    package_imports = GRAPH["relpsp.train"]  # the package only re-exports
    assert "relpsp.train.loop" in package_imports
