"""The data layer stands on its own: no `cropkit.data.*` module imports models or training (not even lazily inside
a function), none pulls training machinery (Lightning, torchmetrics, distributed training) beyond what `import torch`
itself loads, and the data modules form no import cycle at module level (issue 15)."""
import ast, json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "cropkit" / "data"
MODULES = sorted(f"cropkit.data.{p.stem}" for p in DATA.glob("*.py") if p.stem != "__init__")
FORBIDDEN_CROPKIT = ("cropkit.train", "cropkit.models", "cropkit.h2crop_train", "cropkit.cli", "cropkit.recipes",
                     "cropkit.baselines", "cropkit.tune", "cropkit.protocol", "cropkit.metrics", "cropkit.seg_metrics", "cropkit.evaluate", "cropkit.geo")
FORBIDDEN_THIRD_PARTY = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", "torch.distributed",
                         "torch.nn.parallel")


def _loaded_after(module: str) -> tuple[set, set]:
    "(modules loaded by `import torch`, modules loaded by `import torch` then `import module`) in a fresh interpreter."
    code = ("import json, sys, torch; base = set(sys.modules); import importlib; importlib.import_module(%r); "
            "print(json.dumps([sorted(base), sorted(sys.modules)]))" % module)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": ""}, timeout=120)
    assert out.returncode == 0, out.stderr
    base, after = json.loads(out.stdout.strip().splitlines()[-1])
    return set(base), set(after)


def _starts(name: str, prefixes) -> bool: return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module", ["cropkit.data"] + MODULES)
def test_data_module_imports_no_models_or_training(module):
    base, after = _loaded_after(module)
    assert module in after
    bad = sorted(m for m in after if _starts(m, FORBIDDEN_CROPKIT))
    assert not bad, f"{module} imports {bad}: the data layer must not import models or training"
    extra = sorted(m for m in after - base if _starts(m, FORBIDDEN_THIRD_PARTY))
    assert not extra, f"{module} pulls training machinery {extra[:5]} beyond what `import torch` loads"


def _imports(path: Path, module_level_only: bool) -> set[str]:
    "cropkit modules imported by the file at `path` (absolute or relative imports), at module level or anywhere."
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cropkit")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                  # relative: .x inside cropkit.data, ..x inside cropkit
                base = ["cropkit", "data"][: 3 - node.level] if node.level <= 2 else []
                name = ".".join(base + ([node.module] if node.module else []))
            else: name = node.module or ""
            if name.startswith("cropkit"):
                out.add(name)
                if name in ("cropkit.data", "cropkit"): out |= {f"{name}.{a.name}" for a in node.names}
    return out


def test_no_data_module_imports_models_or_training_even_lazily():
    for path in DATA.glob("*.py"):
        bad = sorted(m for m in _imports(path, module_level_only=False) if _starts(m, FORBIDDEN_CROPKIT))
        assert not bad, f"{path.name} imports {bad} (inside a function counts too)"


def test_no_import_cycle_between_data_modules():
    graph = {f"cropkit.data.{p.stem}": {m for m in _imports(p, module_level_only=True) if m.startswith("cropkit.data.")}
             for p in DATA.glob("*.py") if p.stem != "__init__"}
    state = {}
    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open": pytest.fail(f"import cycle: {' -> '.join(stack + [node, nxt])}")
            if nxt not in state: visit(nxt, stack + [node])
        state[node] = "done"
    for node in sorted(graph):
        if node not in state: visit(node, [])
    # the reader and the downloader share cropkit.data.layout and never import each other at module level
    assert "cropkit.data.download" not in graph["cropkit.data.breizhcrops"]
    assert "cropkit.data.breizhcrops" not in graph["cropkit.data.download"]
    assert not (_imports(DATA / "download.py", module_level_only=False) & {"cropkit.data.breizhcrops"}), \
        "the downloader must not import the dataset at all: it only needs cropkit.data.layout"
    assert graph["cropkit.data.layout"] == set(), "cropkit.data.layout must import no other data module"
