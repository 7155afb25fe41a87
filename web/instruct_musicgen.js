// The pack's touches in the browser: Instruct Edit shows operation and stem as inactive while its
// free-text instruction is used (the node then ignores them), and a node added from the search
// is wide enough for its title.
import { app } from "../../scripts/app.js";

const OURS = "InstructMusicGen";
const REPLACED_BY_TEXT = ["operation", "stem"];

function widgetOf(node, name) {
  return (node.widgets || []).find((w) => w.name === name);
}

function reflectInstruction(node) {
  const text = widgetOf(node, "instruction");
  const used = !!(text && String(text.value ?? "").trim());
  for (const name of REPLACED_BY_TEXT) {
    const w = widgetOf(node, name);
    if (w) w.disabled = used;
  }
  node.updateComputedDisabled?.();
  node.setDirtyCanvas?.(true, true);
}

function watchInstruction(node) {
  const text = widgetOf(node, "instruction");
  if (!text) return;
  const callback = text.callback;
  text.callback = function (...args) {
    const result = callback?.apply(this, args);
    reflectInstruction(node);
    return result;
  };
  const element = text.inputEl || text.element;
  element?.addEventListener?.("input", () => reflectInstruction(node));
  reflectInstruction(node);
}

function titleWidth(node) {
  const context = document.createElement("canvas").getContext("2d");
  context.font = app.canvas?.title_text_font || "14px Arial";
  const height = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  return Math.ceil(context.measureText(node.title || "").width + 2 * height);
}

app.registerExtension({
  name: "InstructMusicGen.Widgets",
  nodeCreated(node) {
    if (!String(node.comfyClass || node.type || "").startsWith(OURS)) return;
    if (node.comfyClass === "InstructMusicGenEdit") watchInstruction(node);
    const width = titleWidth(node);
    if (node.size && node.size[0] < width) node.setSize?.([width, node.size[1]]);
  },
  loadedGraphNode(node) {
    if (node.comfyClass === "InstructMusicGenEdit") reflectInstruction(node);
  },
});
