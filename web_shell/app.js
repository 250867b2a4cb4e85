// The chat page. All loading and inference happen in worker.js; this module only draws what the
// worker reports and sends it what the visitor does. Model output is only ever set as text
// (textContent / Text nodes), never parsed as HTML.

import { BACKEND_LABELS } from "./engine.js";
import { formatBytes } from "./loader.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  statusTitle: $("status-title"),
  statusDetail: $("status-detail"),
  statusNotes: $("status-notes"),
  progress: $("progress"),
  intro: $("intro"),
  about: $("about"),
  examples: $("examples"),
  chat: $("chat"),
  messages: $("messages"),
  announce: $("announce"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  speed: $("speed"),
  contextUse: $("context-use"),
  backendNote: $("backend-note"),
  composerNote: $("composer-note"),
  hint: $("hint"),
  backend: $("backend"),
  newChat: $("new-chat"),
  settingsDialog: $("settings"),
  settingsForm: $("settings-form"),
};

const SETTINGS_KEY = "monologue.settings";
const BACKEND_KEY = "monologue.backend";
const DEFAULT_SETTINGS = { temperature: 0.6, topK: 50, topP: 0.95, maxNewTokens: 512, seed: "", thinking: true };

// Short enough for one line at phone width; the status card says why the chat is off.
const PLACEHOLDERS = {
  loading: "Loading the model…",
  ready: "Ask something…",
  generating: "Ask something…",
  "no-backend": "The chat is off",
  error: "The chat is off",
};

// Each kind of load failure (LoadError.kind in loader.js): a title, and what a visitor can do.
const FAILURES = {
  corrupt: {
    title: "A model file is corrupt",
    advice: "Reload the page to download it again. If this keeps happening, the site's files are damaged: tell whoever hosts it.",
  },
  network: { title: "The model could not be downloaded", advice: "Check the connection and reload the page." },
  missing: {
    title: "This site is incomplete",
    advice: "A file the page needs was not uploaded: whoever hosts the site needs to upload all of the compiled site (dist/) again.",
  },
  manifest: {
    title: "This site's model manifest is unusable",
    advice: "The site was not compiled completely; whoever hosts it needs to compile and upload it again.",
  },
  insecure: { title: "This page cannot verify the model here", advice: "" },
  internal: { title: "Something went wrong", advice: "Reloading the page may help." },
};

let conversation = []; // [{role, content, thought?}] sent to the worker with each question
let current = null; // the assistant message being written
let activeBackend = null;
let fileStats = null;
let switchingFrom = null; // the backend to return to if a switch fails
let backendList = []; // [{kind, label, ok, reason}] as the worker last reported them
let upgrading = null; // the backend the worker prepares while the chat runs on the CPU

// The privacy promise must not depend on the host's headers: a Web Worker loaded from a URL of the
// site runs under the policy of its own HTTP response (none, on a plain static host), not under this
// page's CSP meta tag. A worker created from a blob: URL inherits the document's policy (CSP3, and
// Chromium verifiably), so the worker is a one-line blob that imports worker.js, and everything it
// runs is under connect-src/script-src 'self'. (worker-src needs 'self' too: a module worker's
// imports are fetched as worker scripts.)
function startWorker() {
  const entry = `import ${JSON.stringify(new URL("./worker.js", import.meta.url).href)};`;
  const url = URL.createObjectURL(new Blob([entry], { type: "text/javascript" }));
  return new Worker(url, { type: "module" });
}

const worker = startWorker();

// --- status card -----------------------------------------------------------------------------

function setState(state) {
  document.body.dataset.state = state;
  const canChat = state === "ready";
  ui.prompt.disabled = !(canChat || state === "generating");
  ui.send.disabled = !canChat;
  ui.send.hidden = state === "generating";
  ui.stop.hidden = state !== "generating";
  ui.backend.disabled = !canChat || ui.backend.options.length < 2 || upgrading !== null;
  if (upgrading) document.body.dataset.upgrading = upgrading;
  else delete document.body.dataset.upgrading;
  ui.prompt.placeholder = PLACEHOLDERS[state];
  ui.hint.textContent = state === "generating" ? "Esc to stop" : "Enter to send · Shift+Enter for a new line";
}

function showStatus(tone, title, detail = "", notes = [], progress = null) {
  ui.status.hidden = false;
  ui.status.dataset.tone = tone;
  ui.statusTitle.textContent = title;
  ui.statusDetail.textContent = detail;
  ui.statusNotes.replaceChildren(...notes.map((note) => Object.assign(document.createElement("li"), { textContent: note })));
  ui.progress.hidden = progress === null;
  if (progress !== null) ui.progress.value = progress;
}

// The chat cannot start: say why, and that no backend is running.
function showFailure(title, message, notes = []) {
  showStatus("error", title, message, notes);
  ui.backend.replaceChildren(new Option("not started", ""));
  setState("error");
}

// Files download in parallel and each is verified as it arrives, so the title follows the whole
// load (downloading until every byte is in), not the stage of whichever file reported last.
function showProgress({ stage, file, loaded, total, fromCache, backend, background }) {
  if (background) {
    ui.backendNote.textContent = `Preparing the ${BACKEND_LABELS[backend] ?? backend}: shaders ${loaded} of ${total} compiled; the CPU answers meanwhile`;
    return;
  }
  if (stage === "compile") {
    const title = backend === "webgpu" ? "Compiling shaders" : "Preparing the CPU runtime";
    showStatus("busy", title, total ? `${loaded} of ${total}` : "", [], total ? loaded / total : 0);
    return;
  }
  let title = "Verifying the model files";
  if (loaded < total) title = fromCache ? "Loading the model from this device" : "Downloading the model";
  const where = file ? ` · ${file}` : "";
  showStatus("busy", title, `${formatBytes(loaded)} of ${formatBytes(total)}${where}`, [], total ? loaded / total : 1);
}

function filesSummary() {
  if (!fileStats) return "";
  const cached = fileStats.fromCache === fileStats.count ? ", all from this device's cache" : fileStats.fromCache ? `, ${fileStats.fromCache} from this device's cache` : "";
  const files = fileStats.count === 1 ? "1 file" : `${fileStats.count} files`;
  return `${files}, ${formatBytes(fileStats.bytes)}, checked against their sha256${cached}`;
}

// --- backends --------------------------------------------------------------------------------

function showBackends(backends) {
  backendList = backends;
  ui.backend.replaceChildren(
    ...backends.map(({ kind, label, ok, reason }) => {
      const option = new Option(ok ? label : `${label}: unavailable`, kind);
      option.disabled = !ok;
      option.title = reason;
      return option;
    }),
  );
  const firstUsable = backends.find((b) => b.ok);
  if (!firstUsable) ui.backend.prepend(new Option("no backend", "", true, true));
}

// Falling back to the CPU is worth a word: replies are slower there, and the visitor may be able to
// do something about the reason.
function showReadyNotes(backend) {
  const gpu = backendList.find((b) => b.kind === "webgpu");
  const fallback = backend === "wasm" && gpu && !gpu.ok ? [`Running on the CPU: ${gpu.label} is unavailable (${gpu.reason}).`] : [];
  const notes = [...fallback, ...(fileStats?.warnings ?? [])];
  if (notes.length) showStatus("warn", "The model is ready", filesSummary(), notes);
  else ui.status.hidden = true;
}

function setActiveBackend(kind) {
  activeBackend = kind;
  ui.backend.value = kind;
}

function switchBackend() {
  const kind = ui.backend.value;
  if (!kind || kind === activeBackend) return;
  switchingFrom = activeBackend;
  setState("loading");
  worker.postMessage({ type: "switch", backend: kind });
}

// A closed <select> changes its value at each arrow key: a keyboard pick switches only on Enter (and
// is undone when focus moves on without it), so arrowing past a backend does not start it. A pointer
// pick in the open list is a confirmation in itself.
const PICK_KEYS = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home", "End", "PageUp", "PageDown"]);
let keyboardPick = false;
ui.backend.addEventListener("keydown", (event) => {
  if (PICK_KEYS.has(event.key)) keyboardPick = true;
  if (event.key === "Enter" && ui.backend.value !== activeBackend) {
    event.preventDefault();
    keyboardPick = false;
    switchBackend();
  }
});
ui.backend.addEventListener("pointerdown", () => (keyboardPick = false));
ui.backend.addEventListener("change", () => {
  if (!keyboardPick) switchBackend();
  else ui.hint.textContent = ui.backend.value === activeBackend ? "" : "Enter to switch backend";
});
ui.backend.addEventListener("blur", () => {
  if (document.body.dataset.state === "ready" && activeBackend) ui.backend.value = activeBackend;
  keyboardPick = false;
  setState(document.body.dataset.state);
});

// --- settings --------------------------------------------------------------------------------

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY)) ?? {};
  } catch {
    // unreadable settings: start from the defaults
  }
  writeSettingsForm({ ...DEFAULT_SETTINGS, ...saved });
}

function writeSettingsForm(settings) {
  for (const [name, value] of Object.entries(settings)) {
    const input = ui.settingsForm.elements[name];
    if (input?.type === "checkbox") input.checked = value !== false;
    else if (input) input.value = value;
  }
}

function numberField(name, min, max, integer) {
  const input = ui.settingsForm.elements[name];
  let value = Number(input.value);
  if (input.value === "" || !Number.isFinite(value)) value = DEFAULT_SETTINGS[name];
  value = Math.min(max, Math.max(min, integer ? Math.round(value) : value));
  input.value = value;
  return value;
}

function readSettings() {
  const seedText = ui.settingsForm.elements.seed.value.trim();
  const settings = {
    temperature: numberField("temperature", 0, 2, false),
    topK: numberField("topK", 0, 1000, true),
    topP: numberField("topP", 0.01, 1, false),
    maxNewTokens: numberField("maxNewTokens", 1, 8192, true),
    seed: seedText === "" ? "" : numberField("seed", 0, 2 ** 32 - 1, true),
    thinking: ui.settingsForm.elements.thinking.checked,
  };
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  return settings;
}

$("open-settings").addEventListener("click", () => ui.settingsDialog.showModal());
$("reset-settings").addEventListener("click", () => writeSettingsForm(DEFAULT_SETTINGS));
ui.settingsDialog.addEventListener("close", readSettings);

// --- messages --------------------------------------------------------------------------------

function nearBottom() {
  return ui.chat.scrollHeight - ui.chat.scrollTop - ui.chat.clientHeight < 80;
}

function keepScrolled(wasNearBottom) {
  if (wasNearBottom) ui.chat.scrollTop = ui.chat.scrollHeight;
}

function addUserMessage(text) {
  const item = document.createElement("li");
  item.className = "message user";
  item.append(Object.assign(document.createElement("p"), { textContent: text }));
  ui.messages.append(item);
  return item;
}

// A line in the conversation from the page itself (what the model no longer reads), before `item`.
function addNote(text, item) {
  const note = Object.assign(document.createElement("li"), { className: "message note", textContent: text });
  ui.messages.insertBefore(note, item);
}

// What fitConversation (context.js) left out to make room, said in the conversation.
function contextNote({ droppedTurns, droppedThoughts, limit }) {
  const parts = [];
  if (droppedTurns) parts.push(droppedTurns === 1 ? "the oldest turn" : `the ${droppedTurns} oldest turns`);
  if (droppedThoughts) parts.push(droppedThoughts === 1 ? "its thought in an earlier reply" : `its thoughts in ${droppedThoughts} earlier replies`);
  if (!parts.length) return "";
  return `The conversation outgrew what the model reads at a time (${limit} tokens): from here on it no longer sees ${parts.join(" or ")}.`;
}

function showContextUse(used, limit) {
  ui.contextUse.textContent = Number.isFinite(limit) ? `Context ${used} of ${limit} tokens` : "";
}

// Draws one reply as it streams: the thought panel is open while the model thinks and folds away
// when the answer starts, keeping how long the thinking took.
// history: the conversation the reply belongs to; its answer joins it when done (a reply stopped by
// "New chat" then finishes into the discarded conversation, not the new one).
function createAssistantMessage(history) {
  const item = document.getElementById("assistant-message").content.firstElementChild.cloneNode(true);
  const thought = item.querySelector(".thought");
  const label = item.querySelector(".thought-label");
  const thoughtText = item.querySelector(".thought-text").appendChild(new Text(""));
  const answer = item.querySelector(".answer");
  const answerText = answer.appendChild(new Text(""));
  const meta = item.querySelector(".reply-meta");
  item.setAttribute("aria-busy", "true");
  ui.messages.append(item);

  let thinkingSince = 0;
  let thoughtSeconds = null;
  let ticker = 0;
  const elapsed = () => (performance.now() - thinkingSince) / 1000;
  const endThought = () => {
    if (!thinkingSince || thoughtSeconds !== null) return;
    thoughtSeconds = elapsed();
    clearInterval(ticker);
    label.textContent = `Thought for ${thoughtSeconds.toFixed(1)} s`;
  };

  return {
    history,
    item,
    // The turn as the chat template takes it back (runtime_rs chat.rs): the thought is kept so
    // that later turns see the same context the model wrote.
    get turn() {
      return thoughtText.data
        ? { role: "assistant", content: answerText.data, thought: thoughtText.data }
        : { role: "assistant", content: answerText.data };
    },
    apply({ thought: thoughtDelta, answer: answerDelta, opened, closed }) {
      const follow = nearBottom();
      if (opened) {
        thought.hidden = false;
        thought.open = true;
        thinkingSince = performance.now();
        ticker = setInterval(() => (label.textContent = `Thinking… ${Math.floor(elapsed())} s`), 1000);
      }
      if (thoughtDelta) thoughtText.appendData(thoughtDelta);
      if (closed) {
        endThought();
        thought.open = false;
      }
      if (answerDelta) answerText.appendData(answerDelta);
      keepScrolled(follow);
    },
    finish(text) {
      endThought();
      if (thoughtSeconds !== null && !thoughtText.data) thought.hidden = true;
      item.removeAttribute("aria-busy");
      meta.textContent = text;
      if (!answerText.data) answer.hidden = true;
    },
  };
}

function speedText(tokensPerSecond, backend) {
  return tokensPerSecond > 0 ? `${tokensPerSecond.toFixed(1)} tokens/s on ${BACKEND_LABELS[backend] ?? backend}` : "";
}

// --- what the model can do ------------------------------------------------------------------

// The trainer's summary and example questions (manifest model.source.about): text only, since the
// manifest comes with the model; an example asks itself when clicked.
function showAbout({ summary, examples }) {
  ui.about.textContent = summary;
  ui.about.hidden = !summary;
  ui.examples.replaceChildren(...examples.map((text) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.textContent = text;
    button.addEventListener("click", () => {
      ui.prompt.value = text;
      send();
    });
    const item = document.createElement("li");
    item.append(button);
    return item;
  }));
  ui.examples.hidden = !examples.length;
}

// --- sending ---------------------------------------------------------------------------------

function send() {
  const text = ui.prompt.value.trim();
  if (!text || document.body.dataset.state !== "ready") return;
  const settings = readSettings();
  if (settings.seed === "") settings.seed = crypto.getRandomValues(new Uint32Array(1))[0];
  ui.prompt.value = "";
  fitPrompt();
  ui.intro.hidden = true;
  ui.status.hidden = true;
  ui.composerNote.textContent = "";
  const question = addUserMessage(text);
  conversation.push({ role: "user", content: text });
  current = createAssistantMessage(conversation);
  current.question = { text, item: question };
  ui.chat.scrollTop = ui.chat.scrollHeight;
  setState("generating");
  worker.postMessage({ type: "generate", messages: conversation, settings });
}

function fitPrompt() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 200)}px`;
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.prompt.addEventListener("input", fitPrompt);
ui.stop.addEventListener("click", () => worker.postMessage({ type: "stop" }));
document.addEventListener("keydown", (event) => {
  // The settings dialog uses Escape to close itself.
  if (event.key === "Escape" && document.body.dataset.state === "generating" && !ui.settingsDialog.open) {
    worker.postMessage({ type: "stop" });
  }
});
ui.newChat.addEventListener("click", () => {
  if (current) worker.postMessage({ type: "stop" });
  conversation = [];
  ui.messages.replaceChildren();
  ui.composerNote.textContent = "";
  ui.contextUse.textContent = "";
  ui.intro.hidden = document.body.dataset.state !== "ready" && document.body.dataset.state !== "generating";
  ui.prompt.focus();
});

// --- worker messages -------------------------------------------------------------------------

function finishNote(reason, limit, maxNewTokens) {
  if (reason === "stopped") return "Stopped";
  if (reason === "length") return `Reached the max new tokens setting (${maxNewTokens})`;
  if (reason === "context") return `Cut short: the model's context (${limit} tokens) is full`;
  return "";
}

// The intro for a model that does not think before it answers (index.html has the one that does).
const INTROS = {
  chat: "Ask a question.",
  text: "This model has no chat template: write the start of a text and it continues it.",
};

const onMessage = {
  progress(message) {
    if (document.body.dataset.state === "loading" || message.background) showProgress(message);
  },
  verified({ stats, canSwitchThinking, about, kind }) {
    fileStats = stats;
    if (kind in INTROS) $("intro-text").textContent = INTROS[kind];
    $("thinking-setting").hidden = !canSwitchThinking;
    if (about) showAbout(about);
  },
  backends({ backends }) {
    showBackends(backends);
  },
  "no-backend"({ message, backends }) {
    showStatus(
      "warn",
      message,
      `The model files were downloaded and verified (${filesSummary()}), but this build has nothing to run them on yet, so the chat is off.`,
      [...backends.map((b) => `${b.label}: ${b.reason}`), ...fileStats.warnings],
    );
    setState("no-backend");
  },
  ready({ backend, upgrading: next }) {
    // Only the visitor's own choice is remembered: the CPU that answers while the GPU is being
    // prepared is not a preference.
    if (switchingFrom) localStorage.setItem(BACKEND_KEY, backend);
    switchingFrom = null;
    upgrading = next;
    setActiveBackend(backend);
    showReadyNotes(backend);
    ui.intro.hidden = ui.messages.children.length > 0;
    setState("ready");
    ui.prompt.focus();
  },
  delta(message) {
    current?.apply(message);
    ui.speed.textContent = speedText(message.tokensPerSecond, activeBackend);
  },
  upgraded({ backend }) {
    upgrading = null;
    setActiveBackend(backend);
    ui.backendNote.textContent = "";
    ui.announce.textContent = `Now running on ${BACKEND_LABELS[backend] ?? backend}`;
    setState(document.body.dataset.state);
  },
  "upgrade-failed"() {
    upgrading = null;
    ui.backendNote.textContent = "";
    showReadyNotes(activeBackend);
    setState(document.body.dataset.state);
  },
  switched({ backend, message }) {
    setActiveBackend(backend);
    showStatus("warn", message);
  },
  context({ messages, droppedTurns, droppedThoughts, used, limit }) {
    if (!current) return;
    // What the model left out stays left out: later turns are fitted from here.
    current.history.splice(0, current.history.length, ...messages);
    // A reply that "New chat" discarded finishes out of sight: its notes would belong to nothing.
    if (current.history !== conversation) return;
    const note = contextNote({ droppedTurns, droppedThoughts, limit });
    if (note) addNote(note, current.question.item);
    showContextUse(used, limit);
  },
  done({ reason, tokens, tokensPerSecond, backend, used, limit, maxNewTokens }) {
    const speed = speedText(tokensPerSecond, backend);
    ui.speed.textContent = speed;
    if (current.history === conversation) showContextUse(used, limit);
    const note = [finishNote(reason, limit, maxNewTokens), `${tokens} tokens`, speed].filter(Boolean).join(" · ");
    current.history.push(current.turn);
    current.finish(note);
    ui.announce.textContent = current.turn.content || note;
    current = null;
    setState("ready");
    ui.prompt.focus();
  },
  error({ kind, message }) {
    if (current && kind === "too-long") {
      // Not sent: the message goes back to the composer to be shortened, and off the conversation.
      current.question.item.remove();
      current.item.remove();
      current.history.pop();
      ui.prompt.value = current.question.text;
      fitPrompt();
      ui.composerNote.textContent = message;
      ui.intro.hidden = ui.messages.children.length > 0;
      current = null;
      setState("ready");
      ui.prompt.focus();
      return;
    }
    if (current) {
      // A failed reply is dropped from the conversation along with its question.
      current.finish(`The reply failed: ${message}`);
      current.history.pop();
      current = null;
      setState("ready");
      return;
    }
    if (switchingFrom) {
      // The worker keeps the engine it had when another fails to start.
      setActiveBackend(switchingFrom);
      switchingFrom = null;
      showStatus("error", "Could not switch backends", message);
      setState("ready");
      return;
    }
    const { title, advice } = FAILURES[kind] ?? FAILURES.internal;
    showFailure(title, message, advice ? [advice] : []);
  },
};

worker.addEventListener("message", ({ data }) => onMessage[data.type](data));
worker.addEventListener("error", (event) => {
  event.preventDefault();
  showFailure("The page's worker could not start", event.message || "This browser may not support module workers.");
});

loadSettings();
setState("loading");
worker.postMessage({ type: "load", prefer: localStorage.getItem(BACKEND_KEY) });
