"""kv_dtype on the Scene Memory Cache node (in-process host): the choice is checked by name, the budget follows
it, a request or workflow without it means "model", and fp8 rolling and Echo memories reach the run."""

from __future__ import annotations

import json

import pytest

import echo_nodes_support as S

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]
TOY = "echo-forcing-toy (bundled demo)"
FP8 = "float8_e4m3fn"
LAYOUT = (12, 3, 3, 64, "score_weighted", "local", False, 45, 6)  # anchor .. recall_rope_jump_max


@pytest.fixture(scope="module")
def n(comfy_inprocess):
    plugin = S.load_plugin()
    from importlib import import_module

    return {name: import_module(f"{plugin.__name__}.nodes.{name}")
            for name in ("loader", "timeline", "memory", "sampler", "toy", "budget", "_host")}


def _memory(n, policy: str, kv_dtype: str | None):
    kwargs = {} if kv_dtype is None else {"kv_dtype": kv_dtype}
    return n["memory"].SceneMemoryCache.execute(policy, *LAYOUT, **kwargs)


def test_kv_dtype_is_a_checked_choice(n):
    mem = n["memory"].SceneMemoryCache
    assert mem.validate_inputs("rolling", "score_weighted", "local", FP8) is True
    assert mem.validate_inputs("rolling", "score_weighted", "local") is True  # older workflows: the default
    message = mem.validate_inputs("rolling", "score_weighted", "local", "fp8")
    assert message.startswith("kv_dtype: 'fp8' is not one of 'model', 'float8_e4m3fn'")
    with pytest.raises(ValueError) as e:
        _memory(n, "rolling", "")
    assert e.value.field == "kv_dtype"


def test_fp8_budget_on_the_node_halves_the_stored_window(n):
    plain = json.loads(_memory(n, "rolling", None).args[1])
    out = _memory(n, "rolling", FP8)
    fp8 = json.loads(out.args[1])
    assert plain["kv_storage"] == "model" and fp8["kv_storage"] == FP8
    # Wan 1.3B, bf16 model: the window (2 of 3 parts) at (1 + 4/128)/2, its bf16 rotated-key memo (1 of 3) as is
    assert fp8["gpu_bytes"] / plain["gpu_bytes"] == pytest.approx(((1 + 4 / 128) / 2 * 2 + 1) / 3)
    assert "K/V stored as float8_e4m3fn" in out.ui["text"][0]
    assert out.args[0].kv_dtype == FP8


def test_echo_with_fp8_on_the_node_budgets_and_runs_through_the_sampler(n):
    plain = json.loads(_memory(n, "echo", None).args[1])
    out = _memory(n, "echo", FP8)
    fp8 = json.loads(out.args[1])
    assert plain["kv_storage"] == "model" and fp8["kv_storage"] == FP8
    assert fp8["gpu_bytes"] < 0.55 * plain["gpu_bytes"]  # offloaded Echo at Wan 1.3B, bf16 model
    toy = n["loader"].LoadARVideoModel.execute(TOY, "fp32", "auto").args[0]
    enc = n["toy"].EchoToyTextEncoder.execute().args[0]
    spec = n["timeline"].PromptTimeline.execute(enc, "a red circle bouncing on a blue striped background [1s]",
                                                16.0, "smooth").args[0]
    run = n["sampler"].EchoForcingSampler.execute(toy, spec, 0, 48, 48, 2, out.args[0])
    report = json.loads(next(a for a in run.args if isinstance(a, str) and a.startswith("{")))
    assert report["policy"] == "echo" and report["budget"]["kv_storage"] == FP8


def test_budget_route_without_kv_dtype_means_model_and_names_a_bad_one(n):
    params = dict(zip(n["budget"].MEMORY_INPUTS, ("rolling", *LAYOUT)))
    status, body = n["budget"].budget_response(params)
    assert status == 200 and body["budget"]["kv_storage"] == "model"
    status, body = n["budget"].budget_response({**params, "kv_dtype": FP8})
    assert status == 200 and body["budget"]["kv_storage"] == FP8
    status, body = n["budget"].budget_response({**params, "kv_dtype": "int4"})
    assert status == 200 and body["error"]["field"] == "kv_dtype"


def test_fp8_rolling_memory_runs_through_the_sampler(n):
    toy = n["loader"].LoadARVideoModel.execute(TOY, "fp32", "auto").args[0]
    enc = n["toy"].EchoToyTextEncoder.execute().args[0]
    spec = n["timeline"].PromptTimeline.execute(enc, "a red circle bouncing on a blue striped background [1s]",
                                                16.0, "smooth").args[0]
    memory = _memory(n, "rolling", FP8).args[0]
    out = n["sampler"].EchoForcingSampler.execute(toy, spec, 0, 48, 48, 2, memory)
    report = json.loads(next(a for a in out.args if isinstance(a, str) and a.startswith("{")))
    assert report["policy"] == "rolling" and report["budget"]["kv_storage"] == FP8
    assert report["peak_gpu_bytes"] == report["budget"]["gpu_bytes"]
