"""Shared fixtures. Host fixtures need the ComfyUI trees from scripts/prepare_comfy_host.sh (0.3.75) and
scripts/prepare_comfy_host_080.sh (0.8.0); browser fixtures need scripts/install_browser.sh.

`comfy_server` is one server per host version for the whole session (tests that use it run once per host);
`browser` is one headless Chromium for the session. Screenshots go to $ECHO_TEST_ARTIFACTS (default
out/test-artifacts/).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so `import comfy_host` works in any import mode

import comfy_host  # noqa: E402

CHROMIUM = os.environ.get("ECHO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ECHO_CHROMEDRIVER", "/usr/bin/chromedriver")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def comfy_host_dir() -> Path:
    """The prepared ComfyUI 0.3.75 root (the in-process host). Fails (never skips) when it is missing."""
    try:
        return comfy_host.find_host_dir()
    except comfy_host.ComfyHostMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def comfy_inprocess(comfy_host_dir):
    """ComfyUI's model modules imported in this process, on CPU (see comfy_host.import_comfy)."""
    return comfy_host.import_comfy(comfy_host_dir)


@pytest.fixture(scope="session", params=comfy_host.HOST_VERSIONS, ids=lambda v: f"comfy{v}")
def comfy_host_version(request) -> comfy_host.Host:
    """Each host the server and browser tests run against. 0.3.75 missing fails; 0.8.0 missing fails under CI
    (CI=true) and skips elsewhere, saying how to prepare it."""
    try:
        return comfy_host.find_host(request.param)
    except comfy_host.ComfyHostMissing as e:
        if request.param == comfy_host.HOST_VERSION or _in_ci():
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def test_models(comfy_inprocess, tmp_path_factory):
    """Models folder shared by every server of the session: tiny DiTs in each layout, a stock DiT + LoRA, a tiny
    Wan VAE, a file of the wrong architecture, and stand-ins under the real-model templates' file names."""
    import echo_nodes_support as S

    return S.write_test_models(comfy_host.make_models_dir(tmp_path_factory.mktemp("comfy_models")), comfy_inprocess)


@pytest.fixture(scope="session")
def comfy_models_dir(test_models) -> Path:
    return test_models.dir


@pytest.fixture(scope="session")
def comfy_server(comfy_host_version, test_models, tmp_path_factory):
    """One server per host version for the whole session, with the plugin mounted and the test models."""
    host = comfy_host_version
    server = comfy_host.ComfyServer(host.root, tmp_path_factory.mktemp(f"comfy_server_{host.version}"),
                                    models_dir=test_models.dir, python=host.python)
    server.version = host.version
    server.names, server.stock = test_models.names, test_models.stock
    with server:
        yield server


@pytest.fixture
def comfy_server_factory(comfy_host_dir, tmp_path_factory):
    """Start extra 0.3.75 servers (own models dir, flags or plugin dir); all are stopped after the test."""
    started: list[comfy_host.ComfyServer] = []

    def start(**kwargs) -> comfy_host.ComfyServer:
        server = comfy_host.ComfyServer(comfy_host_dir, tmp_path_factory.mktemp("comfy_server"), **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where browser tests leave their screenshots (kept after the run, for people and CI artefacts)."""
    path = Path(os.environ.get("ECHO_TEST_ARTIFACTS", comfy_host.REPO_ROOT / "out" / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium under Selenium, one for the session. Fails (never skips) when it is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found; run `bash scripts/install_browser.sh` "
                    "(or set ECHO_CHROMIUM / ECHO_CHROMEDRIVER)", pytrace=False)
    import browser as b

    driver = b.start_browser(tmp_path_factory.mktemp("chromium_profile"), CHROMIUM, CHROMEDRIVER)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def one_thread():
    """Tests on tiny tensors: torch's intra-op threads only add contention on a busy 2-core machine (up to 20x
    slower), so such modules run single-threaded and restore the setting afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    """The tiny causal Wan DiT (preset "tiny", seed 0), built once per test module that asks for `model`; a module
    that needs another model defines its own `model` fixture, which takes precedence."""
    import torch

    from echo_core.model.config import get_preset
    from echo_core.model.wan import CausalWanModel

    torch.manual_seed(0)
    return CausalWanModel(get_preset("tiny")).eval()
