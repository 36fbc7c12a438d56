"""The shape of the house, as tests: layers that never import upwards, no import cycles, and
a worker process that never loads torch when its model runs in a process of its own."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "training", "worker")


def _module_name(path: Path) -> str:
    """The installed name: every package of the repository lives under ``emotion_stream``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("emotion_stream", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def import_graph() -> dict[str, set[str]]:
    """Every project module and the project modules it imports (at any depth in the file)."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            targets.update(t for t in found if t in modules and t != name)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return cycles


def test_no_module_imports_itself_through_others():
    # Package __init__ files re-export their modules; an edge into one is an edge to its parts.
    graph = {
        m: {
            t
            for t in ts
            if not (m.startswith(t + ".") and t in ("emotion_stream.worker", "emotion_stream.worker.model"))
        }
        for m, ts in import_graph().items()
    }
    assert _cycles(graph) == []


def test_layers_never_import_upwards():
    graph = import_graph()
    worker, training, schemas = (f"emotion_stream.{name}" for name in ("worker", "training", "schemas"))
    for module, targets in graph.items():
        if module.startswith(schemas):
            assert not {t for t in targets if t.startswith((worker, training))}, module
        if module.startswith(training):
            assert not {t for t in targets if t.startswith(worker)}, f"{module} imports the worker"
        if module.startswith(worker) and not module.startswith(f"{worker}.cli"):
            assert not {t for t in targets if t.startswith(training)}, f"{module} imports training"


def test_the_worker_process_never_imports_torch():
    code = (
        "import sys\n"
        "import emotion_stream.worker.app, emotion_stream.worker.processing, emotion_stream.worker.model\n"
        "import emotion_stream.worker.model.process, emotion_stream.worker.cli.commands\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_cli_works_without_the_training_module_as_in_the_workers_image():
    code = (
        "import sys\n"
        "sys.modules['emotion_stream.training'] = None  # the image leaves training/ out\n"
        "from emotion_stream.worker.cli.main import build_parser, main\n"
        "commands = build_parser()._subparsers._group_actions[0].choices\n"
        "print(sorted(commands))\n"
        "sys.exit(main(['settings']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    first, _, table = out.stdout.partition("\n")
    assert "'worker'" in first and "'aggregate'" in first and "'train'" not in first
    assert "EMOTION_BATCH_SIZE" in table and "training (" not in table


def test_the_distribution_lists_every_package_on_disk_under_one_import_name():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = sorted(_module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py"))
    assert sorted(config["packages"]) == on_disk
    assert config["package-dir"] == {f"emotion_stream.{pkg}": pkg for pkg in PACKAGES}
    for pkg in PACKAGES:
        assert (ROOT / pkg / "py.typed").is_file()


def test_no_code_imports_the_bare_top_level_names():
    """Only ``emotion_stream.<package>`` is installed: a bare ``worker`` would be another project's."""
    bare = []
    for path in [p for d in (*PACKAGES, "tests", "bench") for p in (ROOT / d).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bare += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert bare == []
