// The chunk size a Prompt Timeline's scenes will be cut into: that of the sampler(s) the node feeds, read from
// the graph (the sampler's frames_per_chunk widget, the Load AR Video Model's, or 3 for a stock MODEL), so the
// editor's totals match what the run will generate. null = "auto": the checkpoint decides or nothing is linked.
import { inputSource, outputTargets, widget } from "./echo_dom.js";

export const SAMPLER = "EchoForcingSampler";
export const LOADER = "EchoLoadARVideoModel";
export const TIMELINE = "EchoPromptTimeline";
export const ASSUMED_FPC = 3; // what the sampler's "auto" gives a stock MODEL

// The chunk size the sampler fed by this node will use: its frames_per_chunk widget, else the Load AR Video
// Model's, else 3 for a stock MODEL; null ("auto") when the checkpoint decides or nothing is linked.
function samplerChunk(sampler) {
  const own = parseInt(widget(sampler, "frames_per_chunk")?.value);
  if (own > 0) return { fpc: own, why: "the sampler's frames_per_chunk" };
  const model = inputSource(sampler, "model");
  if (!model) return { fpc: null, why: "no model linked to the sampler" };
  if (model.type !== LOADER) return { fpc: ASSUMED_FPC, why: "a stock MODEL's chunk size" };
  const loader = parseInt(widget(model, "frames_per_chunk")?.value);
  if (loader > 0) return { fpc: loader, why: "Load AR Video Model's frames_per_chunk" };
  return { fpc: null, why: "the checkpoint decides (loader on auto)" };
}

export function chunkSize(node) {
  const samplers = [], seen = new Set([node]), queue = [node];
  while (queue.length) { // through Recall Scene and the like, to every sampler this timeline feeds
    for (const t of outputTargets(queue.shift())) {
      if (seen.has(t)) continue;
      seen.add(t);
      if (t.type === SAMPLER) samplers.push(t);
      else queue.push(t);
    }
  }
  if (!samplers.length) return { fpc: null, why: "no sampler linked" };
  const found = samplers.map(samplerChunk);
  if (found.every((c) => c.fpc != null && c.fpc === found[0].fpc)) return found[0];
  return found.find((c) => c.fpc == null) ?? { fpc: null, why: "the linked samplers differ" };
}

// The Prompt Timeline node a sampler's timeline input comes from (through Recall Scene and the like), or null.
export function timelineFeeding(sampler) {
  let node = inputSource(sampler, "timeline");
  for (let hops = 0; node && hops < 8; hops++) {
    if (node.type === TIMELINE) return node;
    node = inputSource(node, "timeline");
  }
  return null;
}
