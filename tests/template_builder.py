"""Build the templates (example_workflows/*.json, UI format) from their API twins (api_workflows/*.json) in the real
frontend, and their thumbnails from real runs.

    .venv/bin/python tests/template_builder.py            # rewrite every template and thumbnail
    .venv/bin/python tests/template_builder.py --only-json

The API twins are the source: each is loaded with the frontend's own API loader (so widget values, links and node
sizes are what ComfyUI makes of them), laid out left to right in columns by graph depth with no overlaps, given a
note that says what the graph does and which files it needs (and where to get them), the loaders' model-download
properties the frontend reads, a fixed seed and a 100% zoom view; then serialised by the frontend.
Thumbnails (same name, .jpg): the bundled-model templates from a real run of their API twin (frames of the video
across its scenes); the real-model templates cannot run here (no weights), so theirs draw the timeline they hold
and the files they need, not an output.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import browser as B  # noqa: E402
import comfy_host  # noqa: E402
import echo_nodes_support as S  # noqa: E402

# Where users get each real-model file (the frontend's missing-models dialog reads node.properties.models).
MODEL_SOURCES = {
    "self_forcing_dmd.pt": ("diffusion_models", "https://huggingface.co/gdhe17/Self-Forcing/resolve/main/checkpoints/"
                                                "self_forcing_dmd.pt"),
    "causal_forcing-framewise.safetensors": (
        "diffusion_models", "https://huggingface.co/TalmajM/causal_forcing_framewise_ComfyUI_repackaged/resolve/main/"
                            "split_files/diffusion_models/causal_forcing-framewise.safetensors"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": (
        "text_encoders", "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/"
                         "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "wan_2.1_vae.safetensors": ("vae", "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/"
                                       "split_files/vae/wan_2.1_vae.safetensors"),
}
MODEL_WIDGETS = {"EchoLoadARVideoModel": "model_name", "UNETLoader": "unet_name", "CLIPLoader": "clip_name",
                 "VAELoader": "vae_name"}

DEMO_WORDS = ("Prompts use the demo model's small grammar: a/an, colours (red, blue, green, yellow, orange, purple, "
              "cyan, white), shapes (circle, square, triangle, ring, cross), motions (moving left/right/up/down, "
              "bouncing, still) and backgrounds (striped, checkered, dotted, plain).")
TIMELINE_HELP = ("Timeline: scenes separated by `|`, each with a duration tag: `[4s]` smooth into the next scene, "
                 "`[4s#]` hard cut, `[4s@]` recall an earlier scene next (`[4s@1]`: scene 1). The bar under the text "
                 "shows the scenes and transitions.")
AFTER_RUN = ("After a run the sampler node shows its report (per scene: transition, recalled scene, RoPE jump; peak "
             "cache; seconds per chunk); the Scene Memory Cache node shows its budget as you change it.")


def _files_note(names: list[str]) -> str:
    lines = ["**Model files** (put each in its folder under `ComfyUI/models/`):", ""]
    for name in names:
        folder, url = MODEL_SOURCES[name]
        lines.append(f"- `{folder}/` [{name}]({url})")
    return "\n".join(lines)


NOTES = {
    "Demo - bundled model": "\n\n".join([
        "## Echo-Forcing demo (no download)",
        "Runs the bundled demo model (a tiny Wan-architecture DiT trained on a toy world, 48x48) on CPU in "
        "seconds: a hard cut into a second scene, then a recall of the first. Width, height and steps 0 = auto "
        "(the model's own size and schedule).",
        TIMELINE_HELP, DEMO_WORDS, AFTER_RUN]),
    "Continue a video - demo": "\n\n".join([
        "## Continue a video (bundled demo model)",
        "The first sampler makes a 3 s video; **Echo Toy Encode** turns its frames into the second sampler's "
        "`start_latent`, which continues that scene for 3 s and then cuts to a new one. The given frames go into "
        "the cache first and stay at the start of the output. To start from your own picture or video instead, "
        "feed Load Image (or a video's frames) into Echo Toy Encode; it resizes to 48x48.",
        DEMO_WORDS]),
    "Wan2.1 Self-Forcing": "\n\n".join([
        "## Wan2.1 Self-Forcing with Echo-Forcing memory",
        "Three scenes, a recall of scene 1 at the end, 832x480, 4 steps per chunk (Self-Forcing's schedule).",
        _files_note(["self_forcing_dmd.pt", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"]),
        "Other causal Wan2.1-T2V-1.3B checkpoints load the same way in **Load AR Video Model** (LongLive "
        "`longlive_base.pt` + `lora.pt`, Rolling Forcing `rolling_forcing_dmd.pt`, CausVid, Causal Forcing).",
        TIMELINE_HELP, AFTER_RUN]),
    "Wan2.1 from an image": "\n\n".join([
        "## Wan2.1: start from an image",
        "Load Image -> scaled to the video size -> **VAE Encode** (Wan 2.1 VAE) -> the sampler's `start_latent`: "
        "the picture becomes the first frame and the timeline continues from it. The same wiring continues a "
        "video: feed its frames instead of one image.",
        _files_note(["self_forcing_dmd.pt", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"]),
        TIMELINE_HELP]),
    "Wan2.1 Causal Forcing": "\n\n".join([
        "## Stock loader: Causal Forcing frame-wise",
        "ComfyUI's own **Load Diffusion Model** (UNETLoader) feeds the Echo-Forcing Sampler; GGUF, fp8 and LoRA "
        "loaders work the same way. This checkpoint generates one latent frame per step, so the sampler's "
        "frames_per_chunk is `1 (frame-wise)` and the memory keeps 5 recent frames.",
        _files_note(["causal_forcing-framewise.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                     "wan_2.1_vae.safetensors"]),
        TIMELINE_HELP]),
}

# Load an API graph with the frontend's own loader, then lay it out left to right: columns by depth (sources sit
# just before their first consumer), nodes stacked in each column with room for their title bars, a note on the
# far left; the Prompt Timeline wide enough for its timeline view.
LAYOUT_JS = r"""
const [api, name, note, sources, modelWidgets, done] = arguments;
(async () => {
  await app.loadApiJson(api, name);
  const g = app.graph, nodes = g._nodes.slice(), byId = new Map(nodes.map(n => [String(n.id), n]));
  const ins = new Map(nodes.map(n => [n, []])), outs = new Map(nodes.map(n => [n, []]));
  for (const [id, spec] of Object.entries(api)) for (const v of Object.values(spec.inputs || {})) {
    if (!Array.isArray(v)) continue;
    const src = byId.get(String(v[0])), dst = byId.get(id);
    ins.get(dst).push(src); outs.get(src).push(dst);
  }
  const depth = new Map();
  const d = (n) => {
    if (!depth.has(n)) depth.set(n, ins.get(n).length ? 1 + Math.max(...ins.get(n).map(d)) : 0);
    return depth.get(n);
  };
  nodes.forEach(d);
  for (const n of nodes) {  // a source sits in the column just before its first consumer
    if (!ins.get(n).length && outs.get(n).length)
      depth.set(n, Math.max(0, Math.min(...outs.get(n).map(c => depth.get(c))) - 1));
  }
  // X0 / Y0 leave room for the side bar and the floating workflow menu at 100% zoom.
  const TITLE = LiteGraph.NODE_TITLE_HEIGHT, GAP_X = 70, GAP_Y = 40 + TITLE, X0 = 100, Y0 = 150 + TITLE;
  for (const n of nodes) {
    const [w, h] = n.computeSize();
    if (n.type === 'EchoPromptTimeline') n.setSize([620, Math.max(h, 330)]);
    else if (n.type === 'SaveVideo' || n.type === 'LoadImage') n.setSize([Math.max(w, 360), Math.max(h, 380)]);
    else if (n.type in modelWidgets) n.setSize([Math.max(w, 360), h]);
    else if (n.type === 'EchoForcingSampler') n.setSize([Math.max(w, 460), h]);  // room for its report
    else if (n.type === 'EchoSceneMemoryCache') n.setSize([Math.max(w, 360), h]);  // and its budget
    else n.setSize([Math.max(w, 300), h]);
    const seed = n.widgets?.find(w => w.name === 'seed');
    const control = n.widgets?.find(w => w.name === 'control_after_generate');
    if (seed && control) control.value = 'fixed';  // the template's own video, every time
    const widget = modelWidgets[n.type] && n.widgets?.find(w => w.name === modelWidgets[n.type]);
    const src = widget && sources[widget.value];
    if (src) n.properties.models = [{name: widget.value, url: src[1], directory: src[0]}];
  }
  const noteNode = LiteGraph.createNode('MarkdownNote');
  noteNode.title = 'Read me';
  g.add(noteNode);
  noteNode.widgets[0].value = note;
  noteNode.setSize([420, 400]);
  const cols = [];
  for (const n of nodes) (cols[depth.get(n)] ??= []).push(n);
  let x = X0 + 420 + GAP_X;
  noteNode.pos = [X0, Y0];
  for (const col of cols) {
    if (!col) continue;
    col.sort((a, b) => Number(a.id) - Number(b.id));
    let y = Y0;
    for (const n of col) { n.pos = [x, y]; y += n.size[1] + GAP_Y; }
    x += Math.max(...col.map(n => n.size[0])) + GAP_X;
  }
  app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];
  g.setDirtyCanvas(true, true);
  await new Promise(r => setTimeout(r, 300));
  const wf = g.serialize();
  wf.extra = {...(wf.extra || {}), ds: {scale: 1, offset: [0, 0]}};
  done(JSON.stringify(wf));
})().catch(e => done('ERROR ' + e + ' ' + e.stack));
"""


def build_json(driver, server, names: list[str]) -> None:
    B.open_app(driver, server.url)
    for name in names:
        api = S.load_api_workflow(f"{name}.json")
        result = driver.execute_async_script(LAYOUT_JS, api, name, NOTES[name], MODEL_SOURCES, MODEL_WIDGETS)
        if result.startswith("ERROR"):
            raise RuntimeError(f"{name}: {result}")
        wf = json.loads(result)
        (S.EXAMPLES / f"{name}.json").write_text(json.dumps(wf, indent=2) + "\n")
        nodes = B.graph_nodes(driver)
        assert not B.overlaps(nodes), (name, B.overlaps(nodes))
        B.screenshot(driver, REPO / "out" / "templates" / f"{name}.png")
        print(f"wrote example_workflows/{name}.json ({len(wf['nodes'])} nodes)")


def _frames_of(data: bytes) -> list:
    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as container:
        return [np.asarray(f.to_image().convert("RGB")) for f in container.decode(video=0)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def _grid(frames: list, labels: list[str], out: Path, size: int = 512) -> None:
    """A square thumbnail: 2x2 frames (nearest-neighbour upscaled, the demo model is 48x48) with captions."""
    from PIL import Image, ImageDraw

    cell = size // 2
    im = Image.new("RGB", (size, size), (20, 22, 30))
    draw = ImageDraw.Draw(im)
    for i, (frame, label) in enumerate(zip(frames, labels)):
        tile = Image.fromarray(frame).resize((cell - 8, cell - 8), Image.NEAREST)
        x, y = (i % 2) * cell + 4, (i // 2) * cell + 4
        im.paste(tile, (x, y))
        draw.rectangle([x, y + cell - 34, x + cell - 9, y + cell - 9], fill=(0, 0, 0))
        draw.text((x + 7, y + cell - 31), label, fill=(255, 255, 255), font=_font(17))
    im.save(out, quality=88)


def thumbnail_from_run(server, name: str) -> None:
    graph = S.load_api_workflow(f"{name}.json")
    entry = server.run_prompt(graph, timeout=600)
    saved = [item for o in entry["outputs"].values() for k in ("images", "videos", "gifs") for item in o.get(k, [])]
    frames = _frames_of(server.view(saved[0]["filename"], saved[0]["subfolder"], saved[0]["type"]))
    samplers = S.find_nodes(graph, "EchoForcingSampler")
    summary = entry["outputs"][max(samplers, key=int)]["echo_report"][0]
    start = summary["start_frames"] * 4 - 3 if summary["start_frames"] else 0  # video frames given to continue
    firsts, extras, pos = [], [], start
    if start:
        firsts.append((start - 1, "given video (last frame)"))
    for sc in summary["scenes"]:
        n = sc["chunks"] * summary["frames_per_chunk"] * 4
        how = {"hardcut": "hard cut", "recall": f"recall of {sc['recall_source']}"}.get(sc["transition"] or "",
                                                                                      sc["transition"])
        label = f"scene {sc['scene']}" + (f" ({how})" if how else (" (continued)" if start else ""))
        firsts.append((min(pos + n // 2, len(frames) - 1), label))
        extras.append((min(pos + n // 5, len(frames) - 1), label))
        pos += n
    chosen = sorted((firsts + extras)[:4] if len(firsts) < 4 else firsts[:4])
    picks, labels = [i for i, _ in chosen], [label for _, label in chosen]
    _grid([frames[i] for i in picks], labels, S.EXAMPLES / f"{name}.jpg")
    print(f"wrote example_workflows/{name}.jpg from a run ({len(frames)} frames)")


def thumbnail_card(driver, server, name: str) -> None:
    """Real-model templates: the timeline they hold (drawn by the plugin's own timeline view) and their files."""
    from PIL import Image, ImageDraw

    api = S.load_api_workflow(f"{name}.json")
    text = next(n["inputs"]["timeline"] for n in api.values() if n["class_type"] == "EchoPromptTimeline")
    files = [v for n in api.values() for k, v in n["inputs"].items()
             if isinstance(v, str) and v in MODEL_SOURCES]
    parsed = server.get_json("/echo_forcing/timeline?" + __import__("urllib.parse").parse.urlencode({"text": text}))
    size = 512
    im = Image.new("RGB", (size, size), (20, 22, 30))
    draw = ImageDraw.Draw(im)
    with Image.open(REPO / "docs" / "icon.png") as icon:
        im.paste(icon.convert("RGB").resize((120, 120)), (size // 2 - 60, 28))
    draw.text((24, 160), name, fill=(255, 255, 255), font=_font(26))
    colours = [(58, 95, 138), (90, 127, 58), (138, 90, 58), (106, 58, 138)]
    total = sum(s["num_chunks"] for s in parsed["scenes"])
    x = 24
    for i, s in enumerate(parsed["scenes"]):
        w = int((size - 48) * s["num_chunks"] / total)
        draw.rectangle([x, 200, x + w - 6, 270], fill=colours[i % len(colours)])
        draw.text((x + 8, 208), f"{i + 1}", fill=(255, 255, 255), font=_font(22))
        draw.text((x + 8, 240), f"{s['seconds']:g} s", fill=(230, 230, 230), font=_font(16))
        x += w
    modes = "   ".join(f"{t['from_scene'] + 1}\u2192{t['to_scene'] + 1} {t['mode']}" for t in parsed["transitions"])
    draw.text((24, 284), modes or "one scene", fill=(200, 200, 220), font=_font(18))
    draw.text((24, 340), "needs (links in the graph's note):", fill=(200, 200, 220), font=_font(17))
    for i, f in enumerate(dict.fromkeys(files)):
        draw.text((34, 368 + 26 * i), f"{MODEL_SOURCES[f][0]}/{f}", fill=(255, 255, 255), font=_font(16))
    im.save(S.EXAMPLES / f"{name}.jpg", quality=88)
    print(f"wrote example_workflows/{name}.jpg (timeline card)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only-json", action="store_true")
    parser.add_argument("--only", nargs="*", help="template names (default: every api_workflows/*.json)")
    args = parser.parse_args()
    names = args.only or sorted(p.stem for p in S.API_WORKFLOWS.glob("*.json"))
    comfy = comfy_host.import_comfy(comfy_host.find_host_dir())
    with tempfile.TemporaryDirectory() as tmp:
        models = S.write_test_models(comfy_host.make_models_dir(Path(tmp) / "models"), comfy)
        host = comfy_host.find_host(comfy_host.HOST_VERSION)
        with comfy_host.ComfyServer(host.root, Path(tmp) / "server", models_dir=models.dir) as server:
            driver = B.start_browser(Path(tmp) / "profile", "/usr/bin/chromium", "/usr/bin/chromedriver")
            try:
                build_json(driver, server, names)
                if not args.only_json:
                    for name in names:
                        api = S.load_api_workflow(f"{name}.json")
                        toy = any(n["inputs"].get("model_name") == "echo-forcing-toy (bundled demo)"
                                  for n in api.values())
                        if toy:
                            thumbnail_from_run(server, name)
                        else:
                            thumbnail_card(driver, server, name)
            finally:
                driver.quit()


if __name__ == "__main__":
    main()
