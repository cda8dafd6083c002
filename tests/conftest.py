"""Shared fixtures. Host fixtures need the ComfyUI tree from scripts/prepare_comfy_host.sh."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so `import comfy_host` works in any import mode

import comfy_host  # noqa: E402


@pytest.fixture(scope="session")
def comfy_host_dir() -> Path:
    """The prepared ComfyUI root. Fails (never skips) when it is missing."""
    try:
        return comfy_host.find_host_dir()
    except comfy_host.ComfyHostMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def comfy_inprocess(comfy_host_dir):
    """ComfyUI's model modules imported in this process, on CPU (see comfy_host.import_comfy)."""
    return comfy_host.import_comfy(comfy_host_dir)


@pytest.fixture(scope="session")
def comfy_models_dir(tmp_path_factory) -> Path:
    """Models folder of the shared server: write test weights into its subfolders."""
    return comfy_host.make_models_dir(tmp_path_factory.mktemp("comfy_models"))


@pytest.fixture(scope="session")
def comfy_server(comfy_host_dir, comfy_models_dir, tmp_path_factory):
    """One server for the whole session with the plugin mounted; start-up costs about 8 s."""
    server = comfy_host.ComfyServer(comfy_host_dir, tmp_path_factory.mktemp("comfy_server"),
                                    models_dir=comfy_models_dir)
    with server:
        yield server


@pytest.fixture
def comfy_server_factory(comfy_host_dir, tmp_path_factory):
    """Start extra servers (own models dir, flags or plugin dir); all are stopped after the test."""
    started: list[comfy_host.ComfyServer] = []

    def start(**kwargs) -> comfy_host.ComfyServer:
        server = comfy_host.ComfyServer(comfy_host_dir, tmp_path_factory.mktemp("comfy_server"), **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def one_thread():
    """Tests on tiny tensors: torch's intra-op threads only add contention on a busy 2-core machine (up to 20x
    slower), so such modules run single-threaded and restore the setting afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
