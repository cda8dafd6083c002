"""A PNG contact sheet of a generated timeline: one thumbnail per chunk, scenes and transitions marked.

Each thumbnail is the last frame of its chunk, under a bar in its scene's colour; a scene boundary is a thick
line before the first chunk of the new scene, labelled with the transition mode. A legend lists the scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SCENE_COLOURS = [(230, 80, 60), (60, 140, 230), (240, 190, 40), (90, 190, 90), (170, 90, 200), (40, 190, 190)]
MODE_LABELS = {"smooth": "smooth", "hardcut": "hard cut", "recall": "recall"}


class ContactSheet:
    def __init__(self, timeline: Any, frames_per_chunk: int, *, per_row: int = 10, thumb: int = 96):
        self.timeline = timeline
        self.fpc = frames_per_chunk
        self.per_row = per_row
        self.thumb = thumb
        self.frames: dict[int, torch.Tensor] = {}

    def add(self, chunk: int, frame: torch.Tensor) -> None:
        """Keep `frame` [3, H, W] in [0, 1] as chunk `chunk`'s thumbnail (a small copy, not the video)."""
        self.frames[chunk] = torch.nn.functional.interpolate(frame[None].float(), size=(self.thumb, self.thumb),
                                                             mode="nearest")[0].clamp(0, 1)

    def _mode_at(self, chunk: int) -> str | None:
        for t in self.timeline.transitions:
            if t.at_chunk == chunk:
                return MODE_LABELS.get(getattr(t.mode, "value", str(t.mode)), str(t.mode))
        return None

    def render(self) -> Any:
        from PIL import Image, ImageDraw

        n = self.timeline.total_chunks
        rows = (n + self.per_row - 1) // self.per_row
        pad, bar, label_h = 6, 6, 14
        cell_w, cell_h = self.thumb + pad, self.thumb + bar + 2 * label_h + pad
        legend_h = 16 * len(self.timeline.scenes) + 10
        width = self.per_row * cell_w + pad
        img = Image.new("RGB", (width, legend_h + rows * cell_h + pad), (24, 24, 24))
        draw = ImageDraw.Draw(img)
        for i, scene in enumerate(self.timeline.scenes):
            colour = SCENE_COLOURS[i % len(SCENE_COLOURS)]
            mode = self._mode_at(scene.start_chunk)
            how = f" (entered by {mode})" if mode else ""
            y = 5 + 16 * i
            draw.rectangle([pad, y + 2, pad + 10, y + 12], fill=colour)
            draw.text((pad + 16, y), f"scene {i + 1}{how}: {scene.prompt}", fill=(235, 235, 235))
        for chunk in range(n):
            r, c = divmod(chunk, self.per_row)
            x, y = pad + c * cell_w, legend_h + r * cell_h
            scene = self.timeline.scene_at_chunk(chunk)
            colour = SCENE_COLOURS[scene.index % len(SCENE_COLOURS)]
            draw.rectangle([x, y + label_h, x + self.thumb - 1, y + label_h + bar - 1], fill=colour)
            if chunk in self.frames:
                arr = (self.frames[chunk] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                img.paste(Image.fromarray(arr), (x, y + label_h + bar))
            seconds = (chunk + 1) * self.fpc * 4 / self.timeline.fps
            draw.text((x, y + label_h + bar + self.thumb + 1), f"{seconds:.1f}s", fill=(180, 180, 180))
            mode = self._mode_at(chunk)
            if mode:
                draw.rectangle([x - pad + 1, y, x - 2, y + cell_h - pad], fill=(255, 255, 255))
                draw.text((x, y), mode, fill=(255, 255, 255))
        return img

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.stem + ".partial.png")
        self.render().save(tmp, format="PNG")
        tmp.replace(p)
        return p
