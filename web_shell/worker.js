// The module Web Worker that loads the model and runs inference, so the page never freezes.
//
// Messages from the page:
//   {type: "load", prefer}                      load and verify the files, then start a backend
//                                               (prefer: a backend kind, or null for the best one)
//   {type: "switch", backend}                   move to another backend (between replies)
//   {type: "generate", messages, settings}      reply to the conversation (settings: temperature,
//                                               topK, topP, maxNewTokens, seed)
//   {type: "stop"}                              end the current reply early
// Messages to the page:
//   {type: "progress", stage, file, loaded, total, fromCache, backend}
//                                               stage: download | verify | compile (backend: the
//                                               one compiling)
//   {type: "verified", stats}                   all files are present and match the manifest
//   {type: "backends", backends}                [{kind, label, ok, reason}] (see engine.js)
//   {type: "no-backend", message, backends}     nothing can run the model; the chat stays off
//   {type: "ready", backend, upgrading}         the chat can start; upgrading: a faster backend
//                                               being prepared meanwhile (progress with
//                                               background: true), or null
//   {type: "upgraded", backend}                 the chat moved to it (between replies)
//   {type: "upgrade-failed", backend}           it could not start (why: in "backends")
//   {type: "delta", thought, answer, opened, closed, tokens, tokensPerSecond}
//   {type: "switched", backend, message}        the reply moved to another backend (device lost)
//   {type: "context", messages, droppedTurns, droppedThoughts, used, limit}
//                                               the conversation as the model will read it (see
//                                               context.js), and the prompt's tokens of limit
//   {type: "done", reason, tokens, tokensPerSecond, backend, used, limit, maxNewTokens}
//                                               reason: end | stopped | length (max new tokens) |
//                                               context (the model's context is full)
//   {type: "error", kind, message, file}        loading or inference failed; kind as in LoadError,
//                                               "too-long" (a message the model cannot read), or
//                                               "internal"

import { fitConversation, replyRoom } from "./context.js";
import { createEngine, probeBackends, BACKEND_LABELS } from "./engine.js";
import { generateReply } from "./generate.js";
import { loadModel } from "./loader.js";
import { ThinkParser } from "./think.js";

// The worker runs from a blob: URL (see app.js): the site is where this module came from.
const SITE = new URL("./", import.meta.url).href;

let model = null; // {manifest, files, stats}; files is null while an engine holds its own copy
let backends = [];
let engine = null;
let reply = null; // the AbortController of the reply in progress
let upgrading = null; // the backend being prepared in the background while the chat runs on the CPU
let upgrade = null; // its engine, once ready, until the current reply is over

const post = (type, data = {}) => self.postMessage({ type, ...data });

const handlers = {
  async load({ prefer }) {
    model = await loadModel(SITE, (p) => post("progress", p));
    // the page offers the thinking switch only where the model's chat template has one
    post("verified", {
      stats: model.stats,
      canSwitchThinking: typeof model.manifest.chat?.template?.generation_no_thinking === "string",
      about: model.manifest.model?.source?.about ?? null,
      // what the intro tells the visitor: a base model continues text; a chat model may think first
      kind: model.manifest.chat?.continues_text ? "text" : model.manifest.chat?.thought === null ? "chat" : "thinks",
    });
    backends = await probeBackends(model.manifest, model.files);
    post("backends", { backends });
    const usable = backends.filter((b) => b.ok);
    if (!usable.length) {
      post("no-backend", { message: "No inference backend is available in this build", backends });
      return;
    }
    // The preferred backend first; one that fails to start (say, a GPU that refuses the device the
    // plan needs) hands over to the next.
    let order = [...usable.filter((b) => b.kind === prefer), ...usable.filter((b) => b.kind !== prefer)];
    // The GPU compiles its shaders for seconds (tens on a software GPU) where the CPU runtime starts
    // in about one: the chat starts on the CPU, and moves to the GPU between replies once it is ready.
    if (order[0].kind === "webgpu" && order.some((b) => b.kind === "wasm")) {
      try {
        await startBackend("wasm", "webgpu");
        await upgradeTo("webgpu");
        return;
      } catch (error) {
        failed("wasm", error);
        order = order.filter((b) => b.kind !== "wasm");
      }
    }
    for (const [i, { kind }] of order.entries()) {
      try {
        await startBackend(kind);
        return;
      } catch (error) {
        if (i === order.length - 1) throw error;
        failed(kind, error);
      }
    }
  },

  async switch({ backend }) {
    if (reply) throw new Error("cannot switch backends while a reply is being written");
    if (upgrading) throw new Error(`cannot switch backends while the ${BACKEND_LABELS[upgrading]} is being prepared`);
    if (!backends.some((b) => b.kind === backend && b.ok)) throw new Error(`${BACKEND_LABELS[backend] ?? backend} is not available`);
    await startBackend(backend);
  },

  async generate({ messages, settings }) {
    if (!engine) throw new Error("no backend is running");
    if (reply) throw new Error("a reply is already being written");
    reply = new AbortController();
    try {
      await writeReply(messages, settings, reply.signal);
    } finally {
      reply = null;
      adoptUpgrade();
    }
  },

  stop() {
    reply?.abort();
  },
};

function failed(kind, error) {
  const entry = backends.find((b) => b.kind === kind);
  Object.assign(entry, { ok: false, reason: `failed to start: ${error.message || error}` });
  post("backends", { backends });
}

// next: the backend that will be prepared in the background right after this one, if any (the
// files stay in memory for it).
async function startBackend(kind, next = null) {
  const started = await createEngine(kind, await modelFiles(), (p) => post("progress", { ...p, stage: "compile", backend: kind }));
  engine?.dispose();
  engine = started;
  // The engine has its own copy (wasm memory, GPU buffers): holding a second one would double the
  // page's memory, and the Cache API can give the files back for a switch.
  if (!next) model.files = null;
  upgrading = next;
  post("ready", { backend: kind, upgrading: next });
}

// Prepares `kind` while the chat goes on, and moves to it between replies. If it fails to start,
// the chat stays where it is and the page is told why.
async function upgradeTo(kind) {
  try {
    upgrade = await createEngine(kind, model, (p) => post("progress", { ...p, stage: "compile", backend: kind, background: true }));
  } catch (error) {
    upgrading = null;
    failed(kind, error);
    post("upgrade-failed", { backend: kind });
    return;
  } finally {
    model.files = null;
  }
  if (!reply) adoptUpgrade();
}

function adoptUpgrade() {
  if (!upgrade) return;
  engine.dispose();
  engine = upgrade;
  upgrade = null;
  upgrading = null;
  post("upgraded", { backend: engine.backend });
}

// The verified files, read again (from the Cache API, hashes checked) once they have been let go.
async function modelFiles() {
  if (!model.files) model = await loadModel(SITE, (p) => post("progress", p));
  return model;
}

async function writeReply(messages, settings, signal) {
  const thinking = settings.thinking !== false || !engine.tokenizer.canSwitchThinking;
  const parser = new ThinkParser({ inThought: engine.tokenizer.opensThought(thinking) });
  const decoder = new TextDecoder();
  let previous = null; // the last token shown: how the next one reads depends on it (engine.js)
  let count = 0;
  let firstAt = 0;
  // Decode speed: tokens after the first over the time since the first, so prefill is not counted.
  const speed = () => (count > 1 ? ((count - 1) * 1000) / (performance.now() - firstAt) : 0);
  const show = (out) => post("delta", { ...out, tokens: count, tokensPerSecond: speed() });

  // The model reads at most sequence_len tokens, prompt and reply together: the conversation is
  // fitted to leave the reply room (context.js), and the reply gets what the prompt leaves.
  const contextLimit = model.manifest.model?.config?.sequence_len ?? Infinity;
  const fitted = fitConversation(messages, (m) => engine.tokenizer.encodeChat(m, thinking), contextLimit, replyRoom(contextLimit, settings.maxNewTokens));
  const promptIds = fitted.promptIds;
  const { droppedTurns, droppedThoughts } = fitted;
  post("context", { messages: fitted.messages, droppedTurns, droppedThoughts, used: promptIds.length, limit: contextLimit });
  const budget = Math.min(settings.maxNewTokens, contextLimit - promptIds.length);
  const wasm = backends.find((b) => b.kind === "wasm" && b.ok);
  const result = await generateReply({
    engine,
    promptIds,
    sampling: { temperature: settings.temperature, topK: settings.topK, topP: settings.topP, seed: settings.seed },
    maxNewTokens: budget,
    signal,
    fallback: engine.backend !== "wasm" && wasm ? async () => createEngine("wasm", await modelFiles(), () => {}) : null,
    onSwitch(next) {
      engine = next;
      post("switched", { backend: next.backend, message: "The GPU stopped responding; the reply continues on the CPU." });
    },
    onToken(id) {
      count += 1;
      if (count === 1) firstAt = performance.now();
      show(parser.push(decoder.decode(engine.tokenizer.tokenBytes(id, previous), { stream: true })));
      previous = id;
    },
  });
  engine = result.engine;
  const tail = parser.push(decoder.decode());
  const end = parser.end();
  show({ thought: tail.thought + end.thought, answer: tail.answer + end.answer, opened: tail.opened, closed: tail.closed });
  // A reply cut because the context is full, not by the visitor's max-new-tokens, says so.
  const reason = result.reason === "length" && budget < settings.maxNewTokens ? "context" : result.reason;
  post("done", { reason, tokens: count, tokensPerSecond: speed(), backend: engine.backend, used: promptIds.length + count, limit: contextLimit, maxNewTokens: settings.maxNewTokens });
}

function describe(error) {
  if (error.name === "MessageTooLong") return { kind: "too-long", message: error.message, file: null };
  if (error.name === "LoadError") return { kind: error.kind, message: error.message, file: error.file };
  return { kind: "internal", message: error.message || String(error), file: null };
}

self.onmessage = async ({ data }) => {
  try {
    await handlers[data.type](data);
  } catch (error) {
    post("error", describe(error));
  }
};
