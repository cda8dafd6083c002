"""Save Scene Memory / Load Scene Memory and the sampler's `scenes` output, in process with ComfyUI 0.3.75 on the
CPU and a tiny model file: a saved scene recalled through the nodes equals the core run with the same saved scene."""

from __future__ import annotations

import json
from importlib import import_module

import pytest
import torch

import echo_nodes_support as S

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def env(comfy_inprocess, tmp_path_factory):
    plugin = S.load_plugin()
    root = tmp_path_factory.mktemp("scene_models")
    S.register_models_dir(root)
    names = S.write_dit_layouts(root / "diffusion_models")
    other = S.write_dit_layouts(root / "diffusion_models" / "other", seed=1)
    import folder_paths

    folder_paths.add_model_folder_path("echo_scenes", str(root / "echo_scenes"), is_default=True)
    n = {name: import_module(f"{plugin.__name__}.nodes.{name}") for name in ("loader", "timeline", "sampler",
                                                                           "scenes")}
    return n, names, "other/" + other["wan"], root


def _out(node_output):
    return node_output.args


def _timeline(n, text: str):
    return _out(n["timeline"].PromptTimeline.execute(n["timeline"].StandinTextEncoder(32, 16), text, 16.0))[0]


def _model(n, name: str):
    return _out(n["loader"].LoadARVideoModel.execute(name, "fp32", "auto"))[0]


def _sample(n, ar, spec, seed=0):
    return _out(n["sampler"].EchoForcingSampler.execute(ar, spec, seed, 64, 64, 2))


def test_nodes_are_registered_with_the_echo_scenes_folder(env):
    n, *_ = env
    import folder_paths

    plugin_nodes = import_module(n["scenes"].__name__.rsplit(".", 1)[0])
    ids = {c.define_schema().node_id for c in plugin_nodes.NODE_CLASSES}
    assert {"EchoSaveSceneMemory", "EchoLoadSceneMemory"} <= ids
    paths, exts = folder_paths.folder_names_and_paths["echo_scenes"]
    assert ".safetensors" in exts and any(p.endswith("echo_scenes") for p in paths)
    schema = n["sampler"].EchoForcingSampler.define_schema()
    assert [o.io_type for o in schema.outputs] == ["LATENT", "STRING", "FLOAT", "ECHO_SCENES"]


def test_save_load_and_recall_a_scene_through_the_nodes(env, tmp_path, monkeypatch):
    n, names, _, root = env
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path / "output"))
    ar = _model(n, names["wan"])
    _, _, _, scenes = _sample(n, ar, _timeline(n, "a red fox runs [1s#] | a blue bird sings [1s]"), seed=4)
    assert [s.name for s in scenes.scenes] == ["scene-1", "scene-2"] and scenes.scenes[0].prompt == "a red fox runs"
    save = n["scenes"].SaveSceneMemory
    files = _out(save.execute(scenes, "1", "fox", "models/echo_scenes", False))[0]
    assert files == str(root / "echo_scenes" / "fox.safetensors")
    out = _out(save.execute(scenes, "all", "fox2, bird", "output/echo_scenes", False))[0].split("\n")
    assert [p.rsplit("/", 2)[-2:] for p in out] == [["echo_scenes", "fox2.safetensors"],
                                                   ["echo_scenes", "bird.safetensors"]]
    with pytest.raises(ValueError, match="^names: fox.safetensors already exist"):
        save.execute(scenes, "1", "fox", "models/echo_scenes", False)
    with pytest.raises(ValueError, match="^scenes_to_save: scene\\(s\\) \\[3\\] left no memory"):
        save.execute(scenes, "1,3", "", "models/echo_scenes", False)
    with pytest.raises(ValueError, match="^names: "):
        save.execute(scenes, "1", "9lives", "models/echo_scenes", False)
    assert {"fox.safetensors", "bird.safetensors"} <= set(folder_paths.get_filename_list("echo_scenes"))

    load = n["scenes"].LoadSceneMemory
    spec = _timeline(n, "[@fox] the red fox runs again [1s@robin] | a blue bird sings [1s]")
    spec = _out(load.execute(spec, "fox.safetensors"))[0]
    spec = _out(load.execute(spec, "bird.safetensors", "robin"))[0]
    assert [s.name for s in spec.saved_scenes] == ["fox", "robin"]
    latent, report, _, _ = _sample(n, ar, spec, seed=5)
    rep = json.loads(report)
    assert rep["scenes"][0]["recall_saved_scene"] == "fox" and rep["scenes"][1]["recall_saved_scene"] == "robin"
    # the same run through the core API, with the files read by scene_library
    from echo_core.run import start_run
    from echo_core.session import MemorySpec, ModuleModel, plan_run, sampler_config

    plan = plan_run(spec, ar.config, 3, 64, 64)
    core, _ = start_run(ModuleModel(ar.patcher.model, ar.config), MemorySpec().policy_for(3, spec.routing),
                        plan.inputs(spec, seed=5, sampler=sampler_config(2, 3))).collect()
    import comfy.latent_formats

    assert torch.equal(latent["samples"], comfy.latent_formats.Wan21().process_out(core))


def test_a_scene_from_other_weights_or_an_unloaded_name_stops_the_sampler_before_it_runs(env, tmp_path):
    n, names, other, root = env
    ar = _model(n, names["wan"])
    _, _, _, scenes = _sample(n, ar, _timeline(n, "a grey cat sleeps [1s]"))
    n["scenes"].SaveSceneMemory.execute(scenes, "1", "cat", "models/echo_scenes", True)
    spec = _out(n["scenes"].LoadSceneMemory.execute(_timeline(n, "[@cat] a grey cat wakes [1s]"), "cat.safetensors"))[0]
    with pytest.raises(ValueError, match="^scene_library: saved scene 'cat' was saved with other weights"):
        _sample(n, _model(n, other), spec)
    with pytest.raises(ValueError, match="^scene_library: the timeline recalls the saved scene 'lynx'"):
        _sample(n, ar, _timeline(n, "[@lynx] a grey cat wakes [1s]"))
    (root / "echo_scenes" / "broken.safetensors").write_bytes(b"\x80\x04not a scene")
    with pytest.raises(ValueError, match="^scene: .*not a scene file \\(a pickle\\)"):
        n["scenes"].LoadSceneMemory.execute(_timeline(n, "a cat [1s]"), "broken.safetensors")
