"""The memory-quality markdown report: the table, what each column means, and a verdict computed from it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from echo_core.run import ROLLING_SINK_FRAMES, ROLLING_WINDOW_FRAMES

BASELINES = ("rolling", "flush")


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def verdict(table: dict[str, dict[str, Any]]) -> list[str]:
    """Does Echo-Forcing beat both baselines on recall fidelity (higher), contamination and detail carry-over
    (lower)?"""
    echo = table["echo"]
    out = []
    for key, better, word in (("recall_fidelity", max, "higher"), ("contamination", min, "lower"),
                              ("detail_carryover", min, "lower")):
        base = {b: table[b][key] for b in BASELINES}
        wins = all((echo[key] > v) if better is max else (echo[key] < v) for v in base.values())
        detail = ", ".join(f"{b} {_f(v, '{:.3f}')}" for b, v in base.items())
        out.append(f"- {key.replace('_', ' ')}: echo {_f(echo[key], '{:.3f}')} vs {detail} ({word} is better): "
                   f"**{'echo beats both baselines' if wins else 'echo does NOT beat both baselines'}**")
    return out


def paired_lines(result: dict[str, Any]) -> list[str]:
    """The paired-difference table: per metric, mean difference over timelines with its bootstrap 95% interval,
    how many timelines went each way, and the wording the interval supports."""
    paired = result.get("paired")
    if not paired:
        return []
    lines = [
        "Paired differences per timeline (same seeds), mean [bootstrap 95% interval], timelines lower / higher / "
        "tied. \"echo - X\": negative is lower for Echo. \"ablation - echo\": what switching the mechanism off "
        "does; \"worse\" there means the mechanism helps. A claim is made only when the interval excludes 0.",
        "",
        "| comparison | metric (better) | n | mean difference [95% CI] | lower / higher / tied | supported |",
        "|---|---|---|---|---|---|",
    ]
    for pair, rows in paired.items():
        for metric, r in rows.items():
            if not r["n"]:
                continue
            lines.append(f"| {pair} | {metric.replace('_', ' ')} ({r['better']}) | {r['n']} | "
                         f"{r['mean']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] | {r['lower']} / {r['higher']} / "
                         f"{r['ties']} | {r['claim']} |")
    return lines + [""]


def write_markdown(result: dict[str, Any], path: Path) -> None:
    st, table = result["settings"], result["table"]
    n = len(result["timelines"])
    lines = [
        f"# Memory quality: cache policies on the toy model{_model_title(result)}",
        "",
        f"`python bench/memory_quality.py{' --quick' if st['timelines'] == 1 and st['scene_seconds'] < 3 else ''}` "
        f"- {n} held-out timeline(s) of 5 scenes x {st['scene_seconds']:g} s (smooth, hard cut, hard cut, "
        f"recall), one {st['long_seconds']:g} s single-prompt run; {result['sampler_steps']} denoising steps per "
        f"chunk, {result['torch_threads']} torch thread(s), same model and seeds for every policy, total "
        f"{result['wall_s']:.0f} s. Deterministic except the timing columns.",
        "",
        "| policy | switch response (chunks) | not reached | contamination | detail carry-over | continuity | "
        "recall fidelity | "
        "recall of scene 1 | recall of a later scene | recall vs other seed | routing correct | "
        f"accuracy first {st['stability_seconds']:g} s | last {st['stability_seconds']:g} s | frames vs echo | "
        "ms/chunk | cache KB | pool KB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in result["policies"]:
        r = table[name]
        lines.append(
            f"| {name} | {_f(r['switch_response_chunks'])} | {r['switch_missed']}/{r['switches']} | "
            f"{_f(r['contamination'], '{:.3f}')} | {_f(r['detail_carryover'], '{:.3f}')} | "
            f"{_f(r['continuity'], '{:.3f}')} | "
            f"{_f(r['recall_fidelity'], '{:.3f}')} | {_f(r['recall_fidelity_first_scene'], '{:.3f}')} | "
            f"{_f(r['recall_fidelity_later_scene'], '{:.3f}')} | {_f(r['recall_vs_other_seed'], '{:.3f}')} | "
            f"{_f(r['routing_correct'])} | {_f(r['stability_first'])} | {_f(r['stability_last'])} | "
            f"{_f(r.get('frames_vs_echo'), '{:.4f}')} | "
            f"{_f(r['chunk_ms'], '{:.0f}')} | {_f(r['cache_kb'], '{:.0f}')} | {_f(r['pool_kb'], '{:.1f}')} |")
    lines += [
        "",
        f"Chance level of recall fidelity (scorer's `chance_level`: same prompt, other seeds, rendered ground "
        f"truth): **{result['chance_gt']:.3f}**. \"Recall vs other seed\" is the same measurement against the "
        "recalled scene generated on its own from another noise seed: the level a policy reaches with no memory "
        "of the first appearance.",
        "",
        "Verdict (computed from the table; the paired intervals below decide what is claimed):",
        *verdict(table),
        "",
        *paired_lines(result),
        "",
        "Columns:",
        "- switch response: chunks generated after a hard cut or recall before the first chunk on which the "
        "scorer names the new scene on at least half the frames (0 = at once); 'not reached' counts switches "
        "where no chunk of the scene did (counted as the scene's chunk count).",
        f"- contamination: share of frames in the {st['window_seconds']:g} s after a hard cut on which the "
        "scorer still names the scene before the cut.",
        f"- detail carry-over: landmark-placement match (F1) of the {st['window_seconds']:g} s after a hard cut to "
        "the last frames of the scene before it (lower is better): the new scene copying the old scene's "
        "unprompted details. It is recall fidelity's counterpart: a policy that never forgets recalls well "
        "and carries details over.",
        f"- continuity: share of frames in the {st['window_seconds']:g} s after a smooth switch (same objects, "
        "new motions) on which every object keeps its colour and shape.",
        "- recall fidelity: seed-detail match (`detail_match`: landmark placement and pattern phase) of the "
        "recalled scene's frames to the same policy's first appearance of that scene. Scene 1 is also the "
        "attention sink of rolling and flush, so those keep seeing it; a later scene is only in Echo's pool.",
        "- routing correct: Echo's similarity routing picked the scene the timeline recalls.",
        "- accuracy first/last: scene accuracy of the single-prompt run over its first and last window "
        "(long-run stability).",
        "- frames vs echo: mean absolute pixel difference (0-1 scale) of the policy's timeline videos to "
        "Echo-Forcing's, same seeds: how much switching a mechanism off changes the video at all, whatever "
        "the metrics make of it.",
        "- ms/chunk: mean generation time per chunk (policies interleaved chunk by chunk); cache KB: peak K/V "
        "held for attention; pool KB: Echo's scene pool (recall frames).",
        "",
        f"Policies: rolling = Self-Forcing sink ({ROLLING_SINK_FRAMES} frame) + {ROLLING_WINDOW_FRAMES}-frame "
        "window, absolute positions; flush = same "
        "window with relative positions, flushed to sink + last 2 frames at every switch; echo = Echo-Forcing "
        "with the node defaults; echo-no-hier = no anchors / compressed history (plain 18-frame recent window "
        "inside Echo); echo-no-recall = nothing inserted at switches (no recall frame); echo-no-decay = fixed "
        "mid-range decay rate instead of difference-aware rates.",
        "",
        *_family_lines(result),
        "Timelines:",
        *[f"{i + 1}. `{t['text']}` (seed {t['seed']})" for i, t in enumerate(result["timelines"])],
        f"- long run: `{result['long_run']['prompt']}` for {result['long_run']['seconds']:g} s",
        "",
    ]
    path.write_text("\n".join(lines))


def _family_lines(result: dict[str, Any]) -> list[str]:
    table = result["table"]
    if "linger" not in table.get("echo", {}):
        return []
    lines = [
        "Mechanism timelines (means; paired intervals above):",
        "",
        "| policy | linger (decay timelines, lower is better) | late detail (long scenes) | "
        "late objects (long scenes) |",
        "|---|---|---|---|",
    ]
    for name in result["policies"]:
        r = table[name]
        lines.append(f"| {name} | {_f(r.get('linger'), '{:.3f}')} | {_f(r.get('late_detail'), '{:.3f}')} | "
                     f"{_f(r.get('late_objects'), '{:.3f}')} |")
    return lines + [
        "",
        "- linger: share of frames in the window after a smooth switch that keeps the background and one object "
        "but replaces the other, on which the dropped object is still drawn (difference-aware decay should fade "
        "the changed region faster).",
        "- late detail / late objects: in a long single scene, seed-detail match of its last third to its own "
        "first frames, and share of last-third frames with every object present (the hierarchy's anchors and "
        "compressed history keep the early frames in view).",
        "Decay timelines: " + "; ".join(f"`{t}`" for t in result.get("decay_timelines", [])),
        "Long single scenes: " + "; ".join(f"`{t}`" for t in result.get("hier_timelines", [])),
        "",
    ]


def _model_title(result: dict[str, Any]) -> str:
    """Which model the numbers come from: a training-free test needs a model never shown Echo's layouts."""
    m = result.get("model")
    if not m:
        return ""
    taught = ("trained as Self-Forcing is (no Echo layouts, no position jumps): Echo-Forcing tested training-free"
              if m["data_mode"] == "self_forcing" else
              "trained on Echo-Forcing's cache layouts too (memory frames, RoPE jumps), like the paper's "
              "fine-tuned rows")
    return f" - {m.get('label', m['weights'])} (world {m['world']}, {taught})"
