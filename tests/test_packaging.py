"""Publishing metadata for the Comfy Registry (pyproject.toml) and the plugin's runtime requirements."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from urllib.parse import urlparse

import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
OLDEST_TESTED_HOST = (0, 3, 75)  # tests/comfy_host.py HOST_VERSION


def _requirements(name: str) -> list[str]:
    lines = (REPO / name).read_text(encoding="utf-8").splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def test_registry_fields():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,98}", project["name"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    repo = project["urls"]["Repository"]
    assert urlparse(repo).scheme == "https" and urlparse(repo).netloc == "github.com"
    assert comfy["PublisherId"] and comfy["DisplayName"]
    # The registry's form: a table naming the file, and the file is the Apache-2.0 text the classifiers claim.
    assert project["license"] == {"file": "LICENSE"}
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert "License :: OSI Approved :: Apache Software License" in project["classifiers"]


def test_icon_url_points_at_a_square_image_in_this_repository():
    from PIL import Image

    icon = PYPROJECT["tool"]["comfy"]["Icon"]
    repo_path = urlparse(PYPROJECT["project"]["urls"]["Repository"]).path.strip("/")
    prefix = f"https://raw.githubusercontent.com/{repo_path}/main/"
    assert icon.startswith(prefix), f"Icon {icon!r} should be a raw file of {repo_path}"
    with Image.open(REPO / icon[len(prefix):]) as im:
        assert im.size[0] == im.size[1] <= 400


def test_requires_comfyui_names_a_version_the_tests_cover():
    spec = PYPROJECT["tool"]["comfy"]["requires-comfyui"]
    m = re.fullmatch(r">=(\d+)\.(\d+)\.(\d+)", spec)
    assert m, spec
    # The nodes need the V3 entry point (comfy_entrypoint); the oldest host the suite runs must satisfy the pin.
    assert tuple(int(x) for x in m.groups()) <= OLDEST_TESTED_HOST
    assert "async def comfy_entrypoint" in (REPO / "__init__.py").read_text(encoding="utf-8")


def test_runtime_requirements_match_and_stay_minimal():
    deps = PYPROJECT["project"]["dependencies"]
    assert _requirements("requirements.txt") == deps
    assert "torch" not in deps  # the host owns it
    # imageio is the command-line demo's MP4 writer only (the host writes video through PyAV): an extra.
    assert not {"imageio", "imageio-ffmpeg"} & set(deps)
    assert set(PYPROJECT["project"]["optional-dependencies"]["demo"]) == {"imageio", "imageio-ffmpeg"}
    assert {"imageio", "imageio-ffmpeg"} <= set(_requirements("requirements-dev.txt"))


def test_every_runtime_dependency_is_imported_and_no_undeclared_one():
    imported = set()
    for path in list((REPO / "echo_core").rglob("*.py")) + list((REPO / "nodes").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    module_of = {"pillow": "PIL"}
    for dep in PYPROJECT["project"]["dependencies"]:
        assert module_of.get(dep, dep) in imported, f"{dep} is declared but nothing imports it"
    assert "einops" not in imported
