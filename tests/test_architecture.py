"""The shape of the code: imports flow one way, and the model library stays plain PyTorch.

Layers, bottom up (``LAYERS``); a module may import any module of a lower layer and of its own package,
never one above it, and a stage module never imports another stage module. Every import counts, also
those inside functions. Tests and benchmarks sit on top and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "core", "cluster", "tokenization", "evaluation", "pipeline")

# (layer, what it is); the order is the direction of imports
LAYERS = (
    (
        "model",
        "training/model/: the model library (model, layers, states, objective, orders, samplers, order "
        "learner); plain PyTorch",
    ),
    ("core", "core/: typed config loading, the atomic writer, the stage contract"),
    ("cluster", "cluster/: Ray, the work queue, DeepSpeed launcher, shared storage, job submission"),
    ("tokenization", "tokenization/: data sources, VQ-GAN, text encoders, token shards"),
    ("training", "training/: trainer, engine, checkpoints, token-shard loader, export loader"),
    ("evaluation", "evaluation/: sampling workers and their files, metrics, figures, report"),
    ("stages", "any */*_stage.py: composes components from the config sections it names"),
    ("pipeline", "pipeline/: experiment config, runner, command line"),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}

# what the model library may not import: engines, files and formats (weights come in as tensors)
MODEL_FORBIDDEN = (
    "ray",
    "deepspeed",
    "webdataset",
    "img2dataset",
    "safetensors",
    "yaml",
    "json",
    "pathlib",
    "os",
    "shutil",
    "tarfile",
    "pickle",
    "io",
    "fsspec",
    "requests",
    "urllib",
    "subprocess",
    "socket",
)


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


MODULES = project_modules()


def layer_of(module: str) -> str:
    path = MODULES[module]
    if path.name.endswith("_stage.py"):
        return "stages"
    if module == "training.model" or module.startswith("training.model."):
        return "model"
    return module.split(".")[0]


def package_of(module: str) -> str:
    return "training.model" if layer_of(module) == "model" else module.split(".")[0]


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported name) of every import statement, resolved to module names where they are modules."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
    return out


def project_target(name: str) -> str | None:
    """The project module ``name`` refers to (itself or its closest parent), or None for third-party."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def violations() -> list[str]:
    bad = []
    for module, path in sorted(MODULES.items()):
        src_layer = layer_of(module)
        for line, name in imports_of(path, module):
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            target = project_target(name)
            if target is None:
                if src_layer == "model" and name.split(".")[0] in MODEL_FORBIDDEN:
                    bad.append(f"{where}: the model library imports {name} (engines and files stay outside it)")
                continue
            dst_layer = layer_of(target)
            if target == module or module.startswith(target + ".") and MODULES[target].name == "__init__.py":
                continue  # a package's own __init__ (nothing but re-exports)
            if RANK[dst_layer] > RANK[src_layer]:
                bad.append(f"{where}: {module} ({src_layer}) imports {target} ({dst_layer}), a higher layer")
            elif RANK[dst_layer] == RANK[src_layer]:
                if src_layer == "stages":
                    bad.append(
                        f"{where}: stage module {module} imports stage module {target}; move what both "
                        f"need into a component"
                    )
                elif package_of(target) != package_of(module):
                    bad.append(f"{where}: {module} imports {target} sideways")
    return bad


def test_imports_flow_one_way():
    bad = violations()
    assert not bad, "imports against the layer order (tests/test_architecture.py LAYERS):\n" + "\n".join(bad)


def test_the_model_library_touches_no_files():
    """Beyond imports: no open(), torch.load/save or Path() in the model library (weights come in as tensors)."""
    import re

    file_io = re.compile(r"\bopen\(|torch\.(load|save)\(|\bPath\(")
    files = [p for m, p in MODULES.items() if layer_of(m) == "model"]
    assert len(files) >= 20
    bad = [str(p.relative_to(ROOT)) for p in files if file_io.search(p.read_text())]
    assert not bad, f"file access in the model library: {bad}"


def test_every_module_has_a_layer():
    assert {layer_of(m) for m in MODULES} <= set(RANK)


def test_stages_are_declared_only_in_stage_modules():
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for dec in node.decorator_list:
                    fn = dec.func if isinstance(dec, ast.Call) else dec
                    if isinstance(fn, ast.Name) and fn.id == "stage":
                        assert path.name.endswith("_stage.py"), f"{path}: @stage outside a *_stage.py module"


def test_the_checker_catches_a_wrong_import(tmp_path, monkeypatch):
    """The checker itself: a model-library module importing ray, or the trainer, is reported."""
    fake = tmp_path / "training" / "model" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import ray\nfrom training.trainer import run_training\n")
    monkeypatch.setitem(MODULES, "training.model.bad", fake)
    bad = [b for b in violations() if "bad.py" in b]
    assert any("imports ray" in b for b in bad) and any("higher layer" in b for b in bad), bad
