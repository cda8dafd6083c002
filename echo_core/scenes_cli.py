"""`python -m echo_core scenes list|show|save` and the scene-library flags of `generate`.

    python -m echo_core generate ... --save-scenes lib/ --scene-names 1=fox,3=lake   # save a run's scenes
    python -m echo_core generate ... --scene-library lib/ --timeline "[@fox] the fox again [10s] | ..."
    python -m echo_core scenes list lib/              # name, prompt, model, grid, size of every scene file
    python -m echo_core scenes show lib/fox.safetensors   (or: show fox --library lib/)
    python -m echo_core scenes save some/scene.safetensors --library lib/ --name forest   # import / rename

Scene files are checked when read (scene_library.load_scene) and against the model and size when a run starts:
a broken file, or one made for another model, grid or chunk size, stops the command before anything is
generated, naming the file and the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_core.errors import InputError
from echo_core.scene_library import (
    SUFFIX,
    SavedScene,
    SceneFileError,
    SceneMeta,
    check_name,
    list_library,
    load_library,
    load_scene,
    save_scene,
)
from echo_core.timeline import Timeline


# ----------------------------------------------------------------------------------------------- generate flags
def add_scene_flags(p: argparse.ArgumentParser) -> None:
    """The scene-library flags of `generate` (and of the toy demo)."""
    p.add_argument("--scene-library", type=Path, default=None,
                   help="folder of saved scenes to recall: '@name' in the timeline recalls one by name, '[@name]' "
                        "opens the video with it, '@' routes among saved and this video's scenes")
    p.add_argument("--scenes", default=None,
                   help="comma-separated saved scene names to load from --scene-library (default: all of them)")
    p.add_argument("--save-scenes", type=Path, default=None,
                   help="folder to save this run's finished scenes to (scene files, one per scene)")
    p.add_argument("--scene-names", default=None,
                   help="which scenes to save and their names, e.g. '1=fox,3=lake' (default: all, 'scene-N')")
    p.add_argument("--overwrite-scenes", action="store_true", help="replace scene files that already exist")


@dataclass
class SceneOptions:
    """What a run loads from and saves to the scene library (prepared before the run: errors come first)."""

    scenes: tuple[SavedScene, ...] = ()
    save_dir: Path | None = None
    names: dict[int, str] | None = None  # 0-based scene -> name; None: every finished scene as 'scene-N'
    overwrite: bool = False
    written: list[str] = field(default_factory=list)

    def save(self, run: Any) -> list[str]:
        """Write the finished run's chosen scenes; returns the paths."""
        if self.save_dir is None:
            return []
        for scene in run.saved_scenes(self.names):
            self.written.append(str(save_scene(scene, self.save_dir / f"{scene.name}{SUFFIX}")))
        return self.written


def parse_scene_names(text: str, num_scenes: int) -> dict[int, str]:
    """'1=fox,3=lake' -> {0: 'fox', 2: 'lake'} (1-based scene numbers of the timeline)."""
    out: dict[int, str] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        number, sep, name = item.partition("=")
        if not sep or not number.strip().isdigit():
            raise InputError("--scene-names", f"{item!r}: write scene=name pairs, e.g. '1=fox,3=lake'")
        i = int(number) - 1
        if not 0 <= i < num_scenes:
            raise InputError("--scene-names", f"scene {i + 1} does not exist; the timeline has scenes 1 to "
                                              f"{num_scenes}")
        out[i] = check_name(name.strip(), "--scene-names")
    if len(set(out.values())) != len(out):
        raise InputError("--scene-names", f"two scenes share a name: {text!r}")
    return out


def scene_options(args: argparse.Namespace, timeline: Timeline) -> SceneOptions:
    """Load the saved scenes and check where the run's scenes will be saved, before anything is generated."""
    opts = SceneOptions()
    if args.scenes is not None and args.scene_library is None:
        raise InputError("--scenes", "choose saved scenes from a folder: add --scene-library DIR")
    if args.scene_library is not None:
        names = None if args.scenes is None else [n.strip() for n in args.scenes.split(",") if n.strip()]
        try:
            opts.scenes = load_library(args.scene_library, names)
        except InputError as e:
            raise e.relabel("--scene-library" if e.field in ("scene_library", "scene_file") else e.field) from None
        missing = [n for n in timeline.recall_names() if n not in {s.name for s in opts.scenes}]
        if missing:
            raise InputError("--scene-library", f"the timeline recalls {', '.join(map(repr, missing))}, not among "
                                                f"the loaded scenes {[s.name for s in opts.scenes]}")
    elif timeline.recall_names():
        raise InputError("--scene-library", f"the timeline recalls saved scene(s) "
                                            f"{', '.join(map(repr, timeline.recall_names()))}: give the folder")
    if args.scene_names is not None and args.save_scenes is None:
        raise InputError("--scene-names", "names the scenes --save-scenes writes: add --save-scenes DIR")
    if args.save_scenes is not None:
        n = len(timeline.scenes)
        opts.names = parse_scene_names(args.scene_names, n) if args.scene_names else {i: f"scene-{i + 1}"
                                                                                      for i in range(n)}
        opts.save_dir, opts.overwrite = args.save_scenes, args.overwrite_scenes
        existing = [str(p) for p in (args.save_scenes / f"{x}{SUFFIX}" for x in opts.names.values()) if p.exists()]
        if existing and not opts.overwrite:
            raise InputError("--save-scenes", f"{', '.join(existing)} already exist; choose other --scene-names or "
                                              "add --overwrite-scenes")
        try:
            args.save_scenes.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError("--save-scenes", f"cannot create {args.save_scenes}: {e.strerror}") from None
    return opts


# ----------------------------------------------------------------------------------------------- scenes command
def add_scenes_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scenes", help="list, show and save scene files (the scene library)",
                       description=__doc__.split("\n")[0])
    cmd = p.add_subparsers(dest="scenes_command", required=True)
    ls = cmd.add_parser("list", help="the scene files of a folder")
    ls.add_argument("library", type=Path)
    ls.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    show = cmd.add_parser("show", help="one scene file's metadata and tensors (fully read and checked)")
    show.add_argument("scene", help="a scene file, or a scene name with --library")
    show.add_argument("--library", type=Path, default=None)
    save = cmd.add_parser("save", help="save a scene file into a library folder, optionally under a new name")
    save.add_argument("source", type=Path, help="a scene file (e.g. written by generate --save-scenes)")
    save.add_argument("--library", type=Path, required=True, help="library folder (created if needed)")
    save.add_argument("--name", default=None, help="the scene's name in the library (default: its own)")
    save.add_argument("--overwrite", action="store_true", help="replace a scene file of that name")
    p.set_defaults(handler=run_scenes)


def _row(path: Path, meta: SceneMeta | SceneFileError) -> dict[str, Any]:
    if isinstance(meta, SceneFileError):
        return {"file": str(path), "error": meta.detail}
    size = path.stat().st_size
    src = meta.source or {}
    return {"file": str(path), "name": meta.name, "prompt": meta.prompt,
            "model": f"dim {meta.model.dim} x {meta.model.num_layers} layers",
            "fingerprint": meta.model_fingerprint, "grid": f"{meta.grid[0]}x{meta.grid[1]}",
            "frames_per_chunk": meta.frames_per_chunk, "kinds": list(meta.kinds), "kv_dtype": meta.kv_dtype,
            "mb": round(size / 2**20, 3), "source": f"seed {src.get('seed')} scene {src.get('scene')}"}


def run_scenes(args: argparse.Namespace) -> None:
    if args.scenes_command == "list":
        try:
            rows = [_row(p, m) for p, m in list_library(args.library)]
        except InputError as e:
            raise e.relabel("library") from None
        if args.json:
            print(json.dumps(rows, indent=1))
            return
        for r in rows:
            if "error" in r:
                print(f"{Path(r['file']).name}: UNUSABLE - {r['error']}")
                continue
            prompt = r["prompt"] if len(r["prompt"]) <= 60 else r["prompt"][:57] + "..."
            print(f"{r['name']:<20} {r['mb']:>9.2f} MB  {r['model']:<22} grid {r['grid']:<7} "
                  f"{r['kv_dtype']:<8} {r['fingerprint'][:8]}  {r['source']:<16} {prompt}")
        print(f"{len(rows)} scene file(s) in {args.library}", file=sys.stderr)
    elif args.scenes_command == "show":
        path = Path(args.scene)
        if args.library is not None and not path.suffix:
            path = args.library / f"{args.scene}{SUFFIX}"
        if not path.is_file():
            raise InputError("scene", f"no scene file {path}")
        scene = load_scene(path)
        info = scene.meta.summary()
        info.update(file=str(path), file_bytes=path.stat().st_size, kv_bytes=scene.nbytes(),
                    tensors={k: [str(t.dtype).replace("torch.", ""), list(t.shape)]
                             for k, t in list(scene.tensors().items())[:4]},
                    tensor_count=len(scene.tensors()))
        print(json.dumps(info, indent=1))
    else:  # save
        scene = load_scene(args.source)
        name = check_name(args.name, "--name") if args.name else scene.name
        target = args.library / f"{name}{SUFFIX}"
        if target.exists() and not args.overwrite:
            raise InputError("--name", f"{target} already exists; choose another --name or add --overwrite")
        path = save_scene(scene.renamed(name), target)
        print(json.dumps({"saved": str(path), "name": name, "bytes": path.stat().st_size}))
