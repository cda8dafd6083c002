// Edits of the timeline text, as splices at the character ranges the Python parser reports (the route's
// `source`: per scene span, prompt, tag, seconds, marker, opening). Nothing here parses the language: every
// function takes the parsed timeline and returns new text in which only the edited characters differ, so a
// round trip through the editor leaves text it did not edit byte-identical. No DOM here.

// Characters that would change the text's structure if typed into a prompt.
const STRUCTURAL = /[|;[\]]/;

export class EditError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

// Apply [start, end, text] replacements given in original offsets (non-overlapping).
export function splice(text, edits) {
  let out = text;
  for (const [start, end, repl] of [...edits].sort((a, b) => b[0] - a[0])) {
    out = out.slice(0, start) + repl + out.slice(end);
  }
  return out;
}

// The text of [start, end) with those `edits` that fall inside it applied.
function sliceWith(text, start, end, edits) {
  const inside = edits.filter(([s, e]) => s >= start && e <= end).map(([s, e, r]) => [s - start, e - start, r]);
  return splice(text.slice(start, end), inside);
}

// Seconds that give exactly `chunks` chunks under the parser's rule int(seconds * fps / (tc * fpc)).
export function secondsForChunks(tl, chunks) {
  const per = tl.temporal_compression * tl.frames_per_chunk;
  const exact = (chunks * per) / tl.fps;
  for (let k = 0; k < 20; k++) {
    const s = String(Math.round((exact + k * 0.001) * 1000) / 1000);
    if (Math.trunc((parseFloat(s) * tl.fps) / per) === chunks) return s;
  }
  return String(exact);
}

export function checkPrompt(prompt) {
  const p = prompt.trim();
  if (!p) throw new EditError("prompt", "the prompt is empty; write what the scene shows");
  if (STRUCTURAL.test(p)) {
    throw new EditError("prompt", "a prompt cannot contain | ; [ or ]: they separate scenes, subtitles and tags; " +
      "use ( ) or commas instead");
  }
  return p;
}

export function checkSeconds(value) {
  const s = String(value).trim();
  if (!/^(?:[0-9]+\.?[0-9]*|\.[0-9]+)$/.test(s) || !(parseFloat(s) > 0)) {
    throw new EditError("seconds", `seconds must be a positive number such as 4 or 2.5, got '${s}'`);
  }
  return s;
}

// The scene whose tag carries the transition out of scene i (0-based): the scene itself for outgoing markers,
// the next one for incoming markers.
export function markerScene(i, semantics) {
  return semantics === "incoming" ? i + 1 : i;
}

// Set scene i's duration; a scene without a tag gets one at its end.
export function setSeconds(text, tl, i, seconds) {
  const src = tl.source[i];
  if (src.seconds) return splice(text, [[src.seconds[0], src.seconds[1], seconds]]);
  return splice(text, [[src.span[1], src.span[1], ` [${seconds}s]`]]);
}

// Replace scene i's prompt text. A tag written inside the prompt ("a [5s] cat") is kept, after the new prompt.
export function setPrompt(text, tl, i, prompt) {
  const src = tl.source[i];
  const [a, b] = src.prompt;
  const inner = [src.tag, src.opening].filter((r) => r && r[0] > a && r[1] < b).map((r) => text.slice(r[0], r[1]));
  return splice(text, [[a, b, [prompt, ...inner].join(" ")]]);
}

// Set the marker ("" | "#" | "@" | "@N" | "@name") of scene j's tag; a scene without a tag gets one with the
// duration it has now.
export function setMarker(text, tl, j, marker) {
  const src = tl.source[j];
  if (src.marker) return splice(text, [[src.marker[0], src.marker[1], marker]]);
  const secs = secondsForChunks(tl, tl.scenes[j].num_chunks);
  return splice(text, [[src.span[1], src.span[1], ` [${secs}s${marker}]`]]);
}

// Renumber "@N" markers with `map(N) -> N' | null` (null: automatic routing); edits in original offsets.
function renumber(text, tl, map, skip = -1) {
  const edits = [];
  tl.scenes.forEach((s, j) => {
    if (j === skip || s.recall_source == null) return;
    const to = map(s.recall_source);
    if (to === s.recall_source) return;
    const m = tl.source[j].marker;
    edits.push([m[0], m[1], to == null ? "@" : `@${to}`]);
  });
  return edits;
}

// Subtitles are matched to scenes by position: deleting or moving a scene takes its subtitle along.
function deleteSubtitle(tl, i) {
  const subs = tl.subtitle_source ?? [];
  if (i >= subs.length) return [];
  if (subs.length === 1) return [[subs[0][0], subs[0][1], ""]];
  return i > 0 ? [[subs[i - 1][1], subs[i][1], ""]] : [[subs[0][0], subs[1][0], ""]];
}

function swapSubtitles(text, tl, i) {
  const subs = tl.subtitle_source ?? [];
  if (i + 1 >= subs.length) return []; // scene i + 1 has no subtitle written: both keep theirs
  const [a, b] = [subs[i], subs[i + 1]];
  return [[a[0], b[1], text.slice(b[0], b[1]) + text.slice(a[1], b[0]) + text.slice(a[0], a[1])]];
}

// Append a scene after the last one (before any subtitles).
export function addScene(text, tl, prompt, seconds) {
  const end = tl.source[tl.source.length - 1].span[1];
  return splice(text, [[end, end, ` | ${prompt} [${seconds}s]`]]);
}

// Delete scene i (and its subtitle) with one neighbouring '|'; "@N" markers that pointed past it follow their
// scene, those that pointed at it fall back to automatic routing.
export function deleteScene(text, tl, i) {
  const n = tl.source.length;
  if (n < 2) throw new EditError("scene", "a timeline needs at least one scene");
  const cut = i > 0 ? [tl.source[i - 1].span[1], tl.source[i].span[1]] : [tl.source[0].span[0], tl.source[1].span[0]];
  const k = i + 1;
  const edits = renumber(text, tl, (N) => (N === k ? null : N > k ? N - 1 : N), i);
  return splice(text, [[cut[0], cut[1], ""], ...edits, ...deleteSubtitle(tl, i)]);
}

// Swap scene i with scene i + 1 (the spaces and '|' between them stay); "@N" markers and subtitles follow their
// scenes.
export function swapScenes(text, tl, i) {
  if (i < 0 || i + 1 >= tl.source.length) throw new EditError("scene", "no scene to swap with");
  const [a, b] = [tl.source[i].span, tl.source[i + 1].span];
  const [ka, kb] = [i + 1, i + 2];
  const edits = renumber(text, tl, (N) => (N === ka ? kb : N === kb ? ka : N));
  const outside = edits.filter(([s]) => s < a[0] || s >= b[1]);
  const swapped = sliceWith(text, b[0], b[1], edits) + text.slice(a[1], b[0]) + sliceWith(text, a[0], a[1], edits);
  return splice(text, [[a[0], b[1], swapped], ...outside, ...swapSubtitles(text, tl, i)]);
}
