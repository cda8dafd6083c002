"""Save Scene Memory and Load Scene Memory: the scene library in ComfyUI.

Owns: which of a run's scenes are saved, their names and folder (models/echo_scenes/ or the output folder's
echo_scenes/, both registered with folder_paths as "echo_scenes"), and which saved scene a timeline recalls. The
file format, its checks and the recall are echo_core.scene_library's. The sampler's `scenes` output carries the
run's finished scenes (their recall frames, in host RAM: about 0.29 GB per scene for Wan2.1 1.3B at 832x480).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from echo_core.errors import EchoError
from echo_core.scene_library import SUFFIX, SavedScene, check_name, load_scene, save_scene
from echo_core.session import TimelineSpec

from . import types
from ._host import NodeInputError

FOLDER = "echo_scenes"
WHERE = ["models/echo_scenes", "output/echo_scenes"]
Scenes = io.Custom("ECHO_SCENES")  # SceneSet


def register_folder() -> None:
    """models/echo_scenes/ (default; extra_model_paths.yaml may add others) and output/echo_scenes/ hold scene
    files (*.safetensors); Load Scene Memory lists all of them."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.get_output_directory(), FOLDER))
    folder_paths.folder_names_and_paths[FOLDER][1].add(SUFFIX)


def _folders() -> dict[str, str]:
    """Where Save Scene Memory writes: the default echo_scenes model folder, or the (current) output folder's."""
    output = os.path.join(folder_paths.get_output_directory(), FOLDER)
    folder_paths.add_model_folder_path(FOLDER, output)  # listed for loading even if the output folder moved
    return {WHERE[0]: folder_paths.get_folder_paths(FOLDER)[0], WHERE[1]: output}


register_folder()


@dataclass(frozen=True, eq=False)
class SceneSet:
    """A run's finished scenes (immutable): what the sampler's `scenes` output carries."""

    scenes: tuple[SavedScene, ...] = ()

    def summary(self) -> str:
        return "\n".join(f"{s.meta.source.get('scene') if s.meta.source else '?'}. {s.prompt}" for s in self.scenes) \
            or "no finished scenes (a policy without a scene pool, or an interrupted run)"


def run_scenes(run) -> SceneSet:
    """The finished scenes of a sampler run (echo_core.run.Run), for the `scenes` output."""
    return SceneSet(tuple(run.saved_scenes()))


def _choose(scenes: SceneSet, which: str, names: str) -> list[SavedScene]:
    by_number = {int(s.meta.source["scene"]): s for s in scenes.scenes if s.meta.source}
    if which.strip().lower() in ("", "all"):
        numbers = sorted(by_number)
    else:
        try:
            numbers = [int(x) for x in which.replace(" ", "").split(",") if x]
        except ValueError:
            raise NodeInputError("scenes_to_save", f"{which!r}: write scene numbers like '1,3' or 'all'") from None
    missing = [n for n in numbers if n not in by_number]
    if missing or not numbers:
        raise NodeInputError("scenes_to_save", f"scene(s) {missing or which!r} left no memory; the run's finished "
                                               f"scenes are {sorted(by_number) or 'none'}")
    given = [x.strip() for x in names.split(",")] if names.strip() else []
    if len(given) > len(numbers):
        raise NodeInputError("names", f"{len(given)} names for {len(numbers)} scenes ({numbers})")
    out = []
    for i, n in enumerate(numbers):
        name = given[i] if i < len(given) and given[i] else f"scene-{n}"
        try:
            out.append(by_number[n].renamed(check_name(name, "names")))
        except EchoError as e:
            raise NodeInputError("names", e.detail) from None
    if len({s.name for s in out}) != len(out):
        raise NodeInputError("names", f"two scenes would share a name: {[s.name for s in out]}")
    return out


class SaveSceneMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoSaveSceneMemory",
            display_name="Save Scene Memory",
            category=types.CATEGORY,
            description="Saves finished scenes of the sampler's run as scene files: recall them in later videos "
                        "with Load Scene Memory and '@name' in the timeline ('[@name]' first: open on it).",
            inputs=[
                Scenes.Input("scenes", tooltip="The Echo-Forcing Sampler's scenes output."),
                io.String.Input("scenes_to_save", default="all", tooltip="Scene numbers, e.g. '1,3', or 'all'."),
                io.String.Input("names", default="", tooltip="Names in the same order, e.g. 'fox, lake' (what '@name' "
                                                             "recalls); empty: scene-N."),
                io.Combo.Input("folder", options=WHERE, default=WHERE[0],
                               tooltip="Where the files go: ComfyUI/models/echo_scenes (a library kept across "
                                       "projects) or the output folder."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace scene files of the same name."),
            ],
            outputs=[io.String.Output(display_name="files", tooltip="The written scene files, one path a line.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, scenes: SceneSet, scenes_to_save: str, names: str, folder: str,
                overwrite: bool) -> io.NodeOutput:
        if not isinstance(scenes, SceneSet):
            raise NodeInputError("scenes", f"expected the sampler's scenes output, got {type(scenes).__name__}")
        chosen = _choose(scenes, scenes_to_save, names)
        target = Path(_folders()[folder])
        paths = [target / f"{s.name}{SUFFIX}" for s in chosen]
        existing = [p.name for p in paths if p.exists()]
        if existing and not overwrite:
            raise NodeInputError("names", f"{', '.join(existing)} already exist in {target}; choose other names or "
                                          "turn on overwrite")
        written = [str(save_scene(s, p)) for s, p in zip(chosen, paths)]
        shown = [f"{s.name}: {s.prompt} ({os.path.getsize(p) / 2**20:.1f} MB)" for s, p in zip(chosen, written)]
        return io.NodeOutput("\n".join(written), ui={"text": ["\n".join(shown)]})


class LoadSceneMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoLoadSceneMemory",
            display_name="Load Scene Memory",
            category=types.CATEGORY,
            description="Adds a saved scene to the timeline: '@name' recalls it at a switch, '[@name]' before the "
                        "first scene opens the video on it, '@' lets routing choose among saved and new scenes. "
                        "Chain one node per scene. The scene must come from the same model, size and chunk size.",
            inputs=[
                types.Timeline.Input("timeline", tooltip="The timeline whose '@name' recalls may use this scene "
                                                         "(Prompt Timeline, or another Load Scene Memory)."),
                io.Combo.Input("scene", options=folder_paths.get_filename_list(FOLDER),
                               tooltip="A scene file from models/echo_scenes or output/echo_scenes."),
                io.String.Input("name", default="", optional=True,
                                tooltip="The name '@name' uses (default: the name it was saved with)."),
            ],
            outputs=[types.Timeline.Output(display_name="timeline",
                                           tooltip="The timeline with this saved scene loaded, for the sampler.")],
        )

    @classmethod
    def execute(cls, timeline: TimelineSpec, scene: str, name: str = "") -> io.NodeOutput:
        if not isinstance(timeline, TimelineSpec):
            raise NodeInputError("timeline", f"expected a Prompt Timeline output, got {type(timeline).__name__}")
        path = folder_paths.get_full_path(FOLDER, scene)
        if path is None:
            raise NodeInputError("scene", f"{scene!r} not found in {folder_paths.get_folder_paths(FOLDER)}")
        try:
            saved = load_scene(path, check_name(name.strip(), "name") if name.strip() else None)
        except EchoError as e:
            raise NodeInputError("name" if e.field == "name" else "scene", e.detail) from None
        kept = tuple(s for s in timeline.saved_scenes if s.name != saved.name)  # a re-load replaces its namesake
        spec = replace(timeline, saved_scenes=kept + (saved,))
        return io.NodeOutput(spec, ui={"text": [f"@{saved.name}: {saved.prompt} ({len(spec.saved_scenes)} saved "
                                                f"scene(s) on this timeline)"]})
