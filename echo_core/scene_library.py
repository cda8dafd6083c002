"""The scene library: a finished scene's recall memory saved as a file, and saved scenes recalled in later videos.

A scene file is a safetensors file (read with safetensors only, never unpickled) holding, per layer, the scene's
recall frame (`compress.<layer>.k|v`, [1, H, S, D] in the cache's storage dtype = the model dtype) and optionally
its first frame (`select.<layer>.k|v`), the routing feature of its prompt (`routing.feature`, float32 [D]) and
metadata pinning what it is valid for::

    format, format_version   "echo-forcing.scene", 1
    name, prompt             the scene's name (what `@name` in a timeline refers to) and its prompt text
    model                    the WanConfig (architecture) the K/V were computed with
    model_fingerprint        echo_core.model.fingerprint.weights_fingerprint of the weights
    frames_per_chunk         of the model / timeline the scene was made with
    latent_shape, patch      one latent frame (C, H, W) and the patch: the token grid of the K/V
    kv_dtype, kinds          storage dtype; which memories the file holds ("compress", "select")
    recall_frames, routing   how the recall frame was fused; where the routing feature came from
    echo_version, source     package version; the source run (seed, scene number, timeline digest, policy)

Size: one frame of K and V per layer, 2 * layers * tokens per frame * dim * bytes. Wan2.1 1.3B at 832x480 in bf16:
2 * 30 * 1560 * 1536 * 2 B = 287.5 MB (0.29 GB) per scene (twice that with the first frame too). The cache stores
K/V in the model dtype only; there is no fp8 storage to save.

A run takes saved scenes in `RunInputs.saved_scenes`: `check_saved_scenes` refuses a file made for another
architecture, other weights, another chunk size or token grid (the error names the field that differs), before
anything runs; `preload_saved_scenes` puts them into the new run's scene pool (after the timeline's scenes:
pool index = number of timeline scenes + position), where `@name` recalls one by name and automatic routing
chooses among saved and in-run scenes (their prompts join the router's, see echo_core.run.build_router).
`export_run_scenes` turns a finished run's pool into saved scenes; `save_scene` / `load_scene` write and read
files; `list_library` reads the metadata of a folder of scene files without loading their tensors.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from echo_core import __version__
from echo_core.errors import InputError, SpecError
from echo_core.model.config import WanConfig
from echo_core.safetensors_out import write_safetensors
from echo_core.timeline import SCENE_NAME, Timeline

FORMAT = "echo-forcing.scene"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
KINDS = ("compress", "select")
MAX_HEADER_BYTES = 1 << 24  # a scene file's header is a few KB; anything near this is not a scene file
_NAME = re.compile(SCENE_NAME)
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
# WanConfig fields a saved scene must share with the model it is loaded into (eps and text_len do not shape K/V)
ARCH_FIELDS = ("dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "patch_size", "ffn_dim",
               "freq_dim", "qk_norm", "cross_attn_norm")


class SceneFileError(InputError):
    """A scene file that cannot be used: unreadable, broken, or made for another model or grid. `key` names the
    metadata field that differs or is wrong ("" when the file is not a scene file at all)."""

    def __init__(self, field: str, detail: str, key: str = "") -> None:
        super().__init__(field, detail)
        self.key = key


def check_name(name: str, field: str = "name") -> str:
    """A saved scene's name as `@name` can refer to it: a letter or '_' first, then letters, digits, '_.-'."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(field, f"{name!r} is not a scene name: use a letter or '_' first, then letters, digits, "
                                "'_', '.' or '-' (at most 64 characters), e.g. 'forest' or 'lake-2'")
    return name


@dataclass(frozen=True)
class SceneMeta:
    """What a saved scene is and what it is valid for (the file's metadata)."""

    name: str
    prompt: str
    model: WanConfig
    model_fingerprint: str
    frames_per_chunk: int
    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent frame
    patch: tuple[int, int]
    kv_dtype: str
    kinds: tuple[str, ...]
    echo_version: str = __version__
    source: Mapping[str, Any] | None = None  # seed, scene (1-based), scenes, timeline digest, policy
    recall_frames: Mapping[str, Any] | None = None
    routing: Mapping[str, Any] | None = None  # {"feature": "router" | "prompt" | None, "method": ...}
    format_version: int = FORMAT_VERSION

    @property
    def grid(self) -> tuple[int, int]:
        return self.latent_shape[1] // self.patch[0], self.latent_shape[2] // self.patch[1]

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_metadata(self) -> dict[str, str]:
        out = {"format": FORMAT, "format_version": str(self.format_version), "name": self.name,
               "prompt": self.prompt, "model": json.dumps(self.model.to_dict(), sort_keys=True),
               "model_fingerprint": self.model_fingerprint, "frames_per_chunk": str(self.frames_per_chunk),
               "latent_shape": json.dumps(list(self.latent_shape)), "patch": json.dumps(list(self.patch)),
               "kv_dtype": self.kv_dtype, "kinds": json.dumps(list(self.kinds)), "echo_version": self.echo_version}
        for key in ("source", "recall_frames", "routing"):
            value = getattr(self, key)
            if value is not None:
                out[key] = json.dumps(value, sort_keys=True)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able description (CLI `scenes show`, node UI)."""
        return {"name": self.name, "prompt": self.prompt, "model": self.model.to_dict(),
                "model_fingerprint": self.model_fingerprint, "frames_per_chunk": self.frames_per_chunk,
                "latent_shape": list(self.latent_shape), "patch": list(self.patch), "grid": list(self.grid),
                "kv_dtype": self.kv_dtype, "kinds": list(self.kinds), "echo_version": self.echo_version,
                "format_version": self.format_version, "source": self.source, "recall_frames": self.recall_frames,
                "routing": self.routing}


@dataclass(frozen=True, eq=False)
class SavedScene:
    """A scene's recall memory with its metadata, in memory (from a finished run or a file). Immutable: a run
    reads its tensors without copying them."""

    meta: SceneMeta
    compress: LayerKV | None = None  # recall frame per layer, (k, v) [1, H, S, D]
    select: LayerKV | None = None  # first frame per layer
    routing_feature: torch.Tensor | None = None  # float32 [D], unit length

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def prompt(self) -> str:
        return self.meta.prompt

    def layers(self, kind: str) -> LayerKV | None:
        return self.compress if kind == "compress" else self.select

    def renamed(self, name: str) -> "SavedScene":
        return replace(self, meta=replace(self.meta, name=check_name(name)))

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for kind in KINDS:
            for i, (k, v) in enumerate(self.layers(kind) or []):
                out[f"{kind}.{i}.k"], out[f"{kind}.{i}.v"] = k, v
        if self.routing_feature is not None:
            out["routing.feature"] = self.routing_feature
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def scene_bytes(cfg: WanConfig, latent_shape: tuple[int, int, int], patch: tuple[int, int] = (2, 2),
                dtype: torch.dtype = torch.bfloat16, kinds: Sequence[str] = ("compress",)) -> int:
    """K/V bytes of a saved scene (the header and the routing feature aside): per memory kind, K and V of one frame
    per layer. Wan2.1 1.3B at 832x480 (latent 16x60x104) in bf16: 287,539,200 bytes."""
    tokens = (latent_shape[1] // patch[0]) * (latent_shape[2] // patch[1])
    return len(kinds) * 2 * cfg.num_layers * tokens * cfg.dim * torch.finfo(dtype).bits // 8


# ------------------------------------------------------------------------------------------------ files
def save_scene(scene: SavedScene, path: str | Path) -> Path:
    """Write `scene` (reproducible bytes, atomic); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, scene.tensors(), scene.meta.to_metadata())
    return path


def _fail(path: Path, detail: str, key: str = "", field: str = "scene_file") -> SceneFileError:
    return SceneFileError(field, f"{path}: {detail}", key)


def _header(path: Path) -> tuple[int, int]:
    """(header length, file size) after checking the file can be a safetensors file at all (no parsing of
    anything else: a pickle or a zip archive is refused by its first bytes)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise _fail(path, f"cannot read the file ({e.strerror})") from None
    if len(head) < 8:
        raise _fail(path, "not a scene file: too short to be safetensors")
    n = struct.unpack("<Q", head)[0]
    if head[:1] == b"\x80" or head[:2] == b"PK" or n > MAX_HEADER_BYTES or 8 + n > size:
        kind = "a pickle" if head[:1] == b"\x80" else "a zip archive (torch.save)" if head[:2] == b"PK" else \
            "truncated or not safetensors"
        raise _fail(path, f"not a scene file ({kind}); scene files are safetensors and are never unpickled")
    return n, size


def _meta_json(path: Path, meta: Mapping[str, str], key: str, kind: type) -> Any:
    try:
        value = json.loads(meta[key])
    except KeyError:
        raise _fail(path, f"the metadata has no {key!r}", key) from None
    except ValueError:
        raise _fail(path, f"metadata {key!r} is not valid JSON", key) from None
    if not isinstance(value, kind):
        raise _fail(path, f"metadata {key!r} must be a {kind.__name__}", key)
    return value


def _parse_meta(path: Path, meta: Mapping[str, str]) -> SceneMeta:
    if meta.get("format") != FORMAT:
        raise _fail(path, f"not a scene file (metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r})",
                    "format")
    version = _meta_json(path, meta, "format_version", int)
    if not 1 <= version <= FORMAT_VERSION:
        raise _fail(path, f"scene format version {version} is newer than this Echo-Forcing reads ({FORMAT_VERSION});"
                          " update Echo-Forcing", "format_version")
    try:
        name = check_name(meta.get("name", ""), "name")
    except InputError as e:
        raise _fail(path, f"metadata 'name': {e.detail}", "name") from None
    model = _meta_json(path, meta, "model", dict)
    try:
        cfg = WanConfig.from_dict(model)
    except (TypeError, ValueError) as e:
        raise _fail(path, f"metadata 'model' is not a Wan architecture ({e})", "model") from None
    shape = _meta_json(path, meta, "latent_shape", list)
    patch = _meta_json(path, meta, "patch", list)
    kinds = _meta_json(path, meta, "kinds", list)
    fpc = _meta_json(path, meta, "frames_per_chunk", int)
    if len(shape) != 3 or len(patch) != 2 or not all(isinstance(x, int) and x > 0 for x in shape + patch + [fpc]):
        raise _fail(path, "metadata 'latent_shape' / 'patch' / 'frames_per_chunk' must be positive integers "
                          "([C, H, W], [ph, pw], n)", "latent_shape")
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise _fail(path, f"metadata 'kinds' must list some of {list(KINDS)}, got {kinds}", "kinds")
    if meta.get("kv_dtype") not in _DTYPE_NAMES.values():
        raise _fail(path, f"metadata 'kv_dtype' {meta.get('kv_dtype')!r} is not one of "
                          f"{sorted(_DTYPE_NAMES.values())}", "kv_dtype")
    fingerprint = meta.get("model_fingerprint", "")
    if not re.fullmatch(r"[0-9a-f]{32}", fingerprint):
        raise _fail(path, "metadata 'model_fingerprint' is missing or malformed", "model_fingerprint")
    extra = {key: _meta_json(path, meta, key, dict) for key in ("source", "recall_frames", "routing") if key in meta}
    return SceneMeta(name=name, prompt=str(meta.get("prompt", "")), model=cfg, model_fingerprint=fingerprint,
                     frames_per_chunk=fpc, latent_shape=tuple(shape), patch=tuple(patch),  # type: ignore[arg-type]
                     kv_dtype=meta["kv_dtype"], kinds=tuple(kinds), echo_version=str(meta.get("echo_version", "")),
                     format_version=version, **extra)


def read_scene_meta(path: str | Path) -> SceneMeta:
    """A scene file's metadata, checked, without loading its tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(path, f"not a readable safetensors file ({e})") from None
    return _parse_meta(path, meta)


def load_scene(path: str | Path, name: str | None = None) -> SavedScene:
    """Read and check a scene file: header, metadata, exactly the expected tensors with the stated shapes and
    dtype, finite values. `name` renames the scene (what `@name` refers to). Raises SceneFileError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    n, size = _header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = _parse_meta(path, dict(f.metadata() or {}))
            layers, heads, head_dim = meta.model.num_layers, meta.model.num_heads, meta.model.head_dim
            want = {f"{kind}.{i}.{kv}": (1, heads, meta.tokens_per_frame, head_dim)
                    for kind in meta.kinds for i in range(layers) for kv in "kv"}
            keys = set(f.keys())
            missing, unknown = sorted(set(want) - keys), sorted(keys - set(want) - {"routing.feature"})
            if missing or unknown:
                raise _fail(path, f"tensors do not match the metadata (missing {missing[:4]}, unexpected "
                                  f"{unknown[:4]})", "tensors")
            kv_code = next(code for code, dt in _DTYPES.items() if _DTYPE_NAMES[dt] == meta.kv_dtype)
            end = 0
            for key in sorted(keys):
                sl = f.get_slice(key)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                if key == "routing.feature":  # float32 [D], D the text encoder's width
                    ok, said = dtype == "F32" and len(shape) == 1 and shape[0] > 0, "F32 [D]"
                else:
                    ok, said = dtype == kv_code and shape == want[key], f"{kv_code} {list(want[key])}"
                if not ok:
                    raise _fail(path, f"tensor {key!r} is {dtype} {list(shape)}, the metadata says {said}", "tensors")
                end += _numel(shape) * torch.finfo(_DTYPES[dtype]).bits // 8
            if 8 + n + end != size:
                raise _fail(path, f"the file is {size} bytes but its tensors need {8 + n + end} (truncated or "
                                  "padded)", "tensors")
            tensors = {key: f.get_tensor(key) for key in sorted(keys)}
    except SafetensorError as e:
        raise _fail(path, f"not a readable safetensors file ({e})") from None
    bad = [key for key, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise _fail(path, f"tensors {bad[:4]} hold NaN or infinite values", "tensors")
    by_kind = {kind: [(tensors[f"{kind}.{i}.k"], tensors[f"{kind}.{i}.v"]) for i in range(layers)]
               for kind in meta.kinds}
    scene = SavedScene(meta, by_kind.get("compress"), by_kind.get("select"), tensors.get("routing.feature"))
    return scene.renamed(name) if name is not None and name != meta.name else scene


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def library_files(folder: str | Path) -> list[Path]:
    """Scene files (*.safetensors) directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("scene_library", f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIX))


def list_library(folder: str | Path) -> list[tuple[Path, SceneMeta | SceneFileError]]:
    """Every scene file in `folder` with its metadata, or the error that makes it unusable (listing never fails
    on one bad file)."""
    out: list[tuple[Path, SceneMeta | SceneFileError]] = []
    for path in library_files(folder):
        try:
            out.append((path, read_scene_meta(path)))
        except SceneFileError as e:
            out.append((path, e))
    return out


def load_library(folder: str | Path, names: Iterable[str] | None = None) -> tuple[SavedScene, ...]:
    """Saved scenes of a library folder: those named (`names`, each must exist) or all of them. A scene's name is
    its metadata name; two files with one name are an error."""
    entries = list_library(folder)
    broken = [e for _, e in entries if isinstance(e, SceneFileError)]
    by_name: dict[str, Path] = {}
    for path, meta in entries:
        if isinstance(meta, SceneMeta):
            if meta.name in by_name:
                raise InputError("scene_library", f"two scene files are named {meta.name!r}: {by_name[meta.name]} "
                                                  f"and {path}; rename one (python -m echo_core scenes save)")
            by_name[meta.name] = path
    if names is None:
        if broken:
            raise broken[0]
        return tuple(load_scene(p) for p in by_name.values())
    wanted = list(dict.fromkeys(names))
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise InputError("scene_library", f"no saved scene named {', '.join(map(repr, missing))} in {folder} "
                                          f"(it holds {sorted(by_name) or 'no scene files'})")
    return tuple(load_scene(by_name[n]) for n in wanted)


# ------------------------------------------------------------------------------------------------ runs
def _module_of(model: Any) -> Any:
    return getattr(model, "module", model)


def model_fingerprint(model: Any) -> str:
    from echo_core.model.fingerprint import weights_fingerprint

    return weights_fingerprint(_module_of(model), model.cfg)


def check_saved_scenes(model: Any, scenes: Sequence[SavedScene], *, frames_per_chunk: int,
                       latent_shape: tuple[int, int, int], patch: tuple[int, int],
                       field: str = "scene_library") -> None:
    """Refuse saved scenes made for another model, weights, chunk size or token grid (SceneFileError naming the
    differing field). Differing K/V dtypes are allowed: the window casts the memory it inserts."""
    if not scenes:
        return
    cfg: WanConfig = model.cfg
    fingerprint = model_fingerprint(model)
    names: set[str] = set()
    for scene in scenes:
        m = scene.meta
        where = f"saved scene {m.name!r}"
        if m.name in names:
            raise SceneFileError(field, f"two saved scenes are named {m.name!r}; rename one", "name")
        names.add(m.name)
        arch = [f for f in ARCH_FIELDS if getattr(m.model, f) != getattr(cfg, f)]
        if arch:
            f = arch[0]
            raise SceneFileError(field, f"{where} was saved for another model architecture: model.{f} is "
                                        f"{getattr(m.model, f)!r} in the file, {getattr(cfg, f)!r} in this model",
                                 f"model.{f}")
        if m.model_fingerprint != fingerprint:
            raise SceneFileError(field, f"{where} was saved with other weights: model_fingerprint is "
                                        f"{m.model_fingerprint} in the file, {fingerprint} for this model (another "
                                        "checkpoint, fine-tune or LoRA)", "model_fingerprint")
        if m.frames_per_chunk != frames_per_chunk:
            raise SceneFileError(field, f"{where} was saved at frames_per_chunk {m.frames_per_chunk}, this run makes "
                                        f"{frames_per_chunk}", "frames_per_chunk")
        grid = (latent_shape[1] // patch[0], latent_shape[2] // patch[1])
        if m.grid != grid or m.latent_shape[0] != latent_shape[0]:
            raise SceneFileError(field, f"{where} was saved for a {m.grid[0]}x{m.grid[1]} token grid (latent "
                                        f"{list(m.latent_shape)}, patch {list(m.patch)}), this run has "
                                        f"{grid[0]}x{grid[1]} (latent {list(latent_shape)}): generate at the "
                                        "scene's size", "latent_grid")


def preload_saved_scenes(cache: Any, scenes: Sequence[SavedScene], timeline: Timeline,
                         field: str = "scene_library") -> bool:
    """Put the saved scenes into `cache`'s scene pool (index = timeline scenes + position) and arm the timeline's
    opening recall. Checks the timeline's `@name`s and the memory kind recalls read. Caches without a scene
    pool (the baselines) ignore saved scenes, as they ignore recalls; returns whether the cache took them."""
    pool = getattr(cache, "pool", None)
    if pool is None or not hasattr(pool, "preload"):
        return False
    loaded = {s.name: s for s in scenes}
    for name in timeline.recall_names():
        if name not in loaded:
            raise SpecError(field, f"the timeline recalls the saved scene {name!r}, which is not loaded; load it "
                                   f"(loaded: {sorted(loaded) or 'none'})")
    if timeline.opening is not None and not scenes:
        raise SpecError(field, "the timeline opens with a recall of a saved scene ([@]) but no saved scene is "
                               "loaded")
    config = getattr(cache, "config", None)
    kind = config.recall.old_memory_source if config is not None else "compress"
    for s in scenes:
        if s.layers(kind) is None:
            raise SpecError(field, f"saved scene {s.name!r} holds no {kind!r} memory, which this memory's recall "
                                   f"uses (recall.old_memory_source); it holds {list(s.meta.kinds)}")
        if len(s.layers(kind) or []) != cache.num_layers:
            raise SpecError(field, f"saved scene {s.name!r} has {len(s.layers(kind) or [])} layers, the cache "
                                   f"{cache.num_layers}")
    router = getattr(cache, "router", None)
    n = len(timeline.scenes)
    if scenes and router is not None and len(router.prompts) != n + len(scenes):
        raise SpecError("memory", "this cache's recall router was built without the saved scenes; pass the memory "
                                  "as a name, an EchoConfig or a factory using PolicyContext.router")
    for j, s in enumerate(scenes):
        pool.preload(n + j, s.name, s.compress, s.select)
    if timeline.opening is not None:
        cache.open_with(timeline.opening)
    return True


def pool_snapshot(cache: Any) -> list[Any]:
    """The run's own finished scenes in `cache`'s pool (references), taken before the cache is released."""
    pool = getattr(cache, "pool", None)
    return [] if pool is None else [e for e in pool.entries if not e.saved]


def export_run_scenes(run: Any, names: Mapping[int, str] | None = None) -> list[SavedScene]:
    """Saved scenes of a finished run (`echo_core.run.Run`), one per finished timeline scene in its pool, in scene
    order. `names`: 0-based scene index -> name, choosing the scenes (default: all, named 'scene-N')."""
    entries = run.finished_pool()
    inputs, timeline = run.inputs, run.timeline
    by_index = {e.scene_index: e for e in entries}
    chosen = dict(names) if names is not None else {i: f"scene-{i + 1}" for i in sorted(by_index)}
    missing = [i for i in chosen if i not in by_index]
    if missing:
        raise SpecError("scenes", f"scene(s) {[i + 1 for i in missing]} left no memory in the pool (unfinished, "
                                  f"dropped by the pool size, or a policy without a scene pool); finished scenes: "
                                  f"{[i + 1 for i in sorted(by_index)]}")
    fingerprint = model_fingerprint(run.model)
    digest = hashlib.sha256(json.dumps(timeline.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    cache_config = getattr(run.cache, "config", None)
    features, feature_kind, method = _routing_features(run)
    out = []
    for i, name in sorted(chosen.items()):
        e = by_index[i]
        kinds = tuple(k for k in KINDS if e.layers(k) is not None)
        compress, select = (_sample0(e.compress), _sample0(e.select))
        first = (compress or select)[0][0]  # type: ignore[index]
        meta = SceneMeta(
            name=check_name(name), prompt=timeline.scenes[i].prompt, model=run.model.cfg,
            model_fingerprint=fingerprint, frames_per_chunk=timeline.frames_per_chunk,
            latent_shape=tuple(inputs.latent_shape), patch=tuple(inputs.patch),  # type: ignore[arg-type]
            kv_dtype=_DTYPE_NAMES[first.dtype], kinds=kinds,
            source={"seed": int(inputs.seed), "scene": i + 1, "scenes": len(timeline.scenes), "timeline": digest,
                    "policy": run.policy, "chunks": timeline.scenes[i].num_chunks},
            recall_frames=None if cache_config is None else cache_config.recall_frames.to_dict(),
            routing={"feature": feature_kind if features is not None else None, "method": method})
        out.append(SavedScene(meta, compress, select, None if features is None else features[i]))
    return out


def _sample0(layers: LayerKV | None) -> LayerKV | None:
    """The first sample of a batch (runs are single videos; a batch's other samples are not exported)."""
    if layers is None:
        return None
    return [(k[:1], v[:1]) for k, v in layers]


def _routing_features(run: Any) -> tuple[torch.Tensor | None, str, str | None]:
    """Per timeline scene, the feature the run's similarity router compared prompts with; otherwise the pooled
    embedding of each scene's prompt (what a run without an encoder compares a saved scene with)."""
    from echo_core.routing import pooled_embedding

    router = getattr(run.cache, "router", None)
    n = len(run.timeline.scenes)
    if router is not None and router.method == "similarity":
        return router.features[:n].detach().to("cpu", torch.float32).clone(), "router", "similarity"
    feats = torch.stack([pooled_embedding(c) for c in run.inputs.contexts])
    return feats, "prompt", None if router is None else router.method
