// DOM and graph helpers shared by the Echo-Forcing front-end files. No extension is registered here.
// Text from users or the server goes in through textContent only, never as HTML.

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export function injectCss(id, css) {
  if (document.getElementById(id)) return;
  const style = document.createElement("style");
  style.id = id;
  style.textContent = css;
  document.head.appendChild(style);
}

// Run `after` after the original method (litegraph callbacks are plain properties).
export function chainCallback(obj, name, after) {
  const orig = obj[name];
  obj[name] = function (...args) {
    const r = orig?.apply(this, args);
    after.apply(this, args);
    return r;
  };
}

export const widget = (node, name) => node?.widgets?.find((w) => w.name === name);

// litegraph keeps links in a plain object (old frontends) or a Map (new ones).
export function getLink(graph, id) {
  if (id == null || !graph) return null;
  return graph.links?.get?.(id) ?? graph.links?.[id] ?? null;
}

// The node feeding input `name` of `node`, or null.
export function inputSource(node, name) {
  const input = node.inputs?.find((i) => i.name === name);
  const link = getLink(node.graph, input?.link);
  return link ? node.graph.getNodeById(link.origin_id) : null;
}

// Every node that one of `node`'s outputs feeds.
export function outputTargets(node) {
  const out = [];
  for (const o of node.outputs ?? []) {
    for (const id of o.links ?? []) {
      const link = getLink(node.graph, id);
      const target = link ? node.graph.getNodeById(link.target_id) : null;
      if (target) out.push(target);
    }
  }
  return out;
}
