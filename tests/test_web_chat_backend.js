// A scripted backend for tests/test_web_chat.py, injected into the page only by that test (the
// shipped engine.js has no backends yet). It implements the Engine interface of engine.js with a
// byte-level "tokenizer" (ids 0-255 are bytes) and a "model" that writes a fixed reply, one byte per
// step, so tags and UTF-8 characters arrive split across tokens as they may from a real model.
import { DeviceLostError } from "./engine.js";

const STOP = 256;
const REPLY_START = 257; // ends every prompt, like the assistant-start token of a chat template
const kind = new URL(import.meta.url).searchParams.get("kind");

// thinking false (the page's Thinking setting, where the manifest's template can switch it off): the
// answer alone, as a model whose generation prompt closed an empty thought.
function replyFor(messages, sampling, thinking = true) {
  const question = messages.at(-1).content;
  const thought = question.includes("long")
    ? "step ".repeat(400)
    : `The user asked: ${question}. Two plus two is four, so I will say so.`;
  const answer =
    `The answer is <b>4</b> — ça fait 4 🎉. <img src=x onerror="document.title='pwned'"> ` +
    `[turns=${messages.length} thoughts=${messages.filter((m) => m.thought).length} temperature=${sampling.temperature} topK=${sampling.topK} topP=${sampling.topP} seed=${sampling.seed}]`;
  return new TextEncoder().encode(thinking ? `<think>\n${thought}\n</think>\n\n${answer}` : answer);
}

export async function probe() {
  return { ok: true };
}

export async function create({ manifest, onProgress }) {
  if (manifest.test_refuse?.includes(kind)) throw new Error("the device refused the plan's limits");
  for (let i = 1; i <= 3; i++) onProgress({ loaded: i, total: 3 });
  const thinkMs = manifest.test_think_ms ?? 8;
  const answerMs = manifest.test_answer_ms ?? 2;
  let context = [];
  let sampling = null;
  let steps = 0;
  let thinking = true;
  const decodePrompt = () => JSON.parse(new TextDecoder().decode(new Uint8Array(context.slice(0, context.lastIndexOf(REPLY_START)))));
  return {
    backend: kind,
    tokenizer: {
      encodeChat: (messages, on = true) => {
        thinking = on;
        return [...new TextEncoder().encode(JSON.stringify(messages)), REPLY_START];
      },
      tokenBytes: (id) => new Uint8Array(id < 256 ? [id] : []),
      isStop: (id) => id === STOP,
      canSwitchThinking: typeof manifest.chat?.template?.generation_no_thinking === "string",
      opensThought: () => false,
    },
    reset(options) {
      sampling = options;
      context = [];
    },
    async prefill(ids) {
      context.push(...ids);
    },
    async step() {
      const messages = decodePrompt();
      steps += 1;
      if (kind === "webgpu" && messages.at(-1).content.includes("lose-gpu") && steps === 30) {
        throw new DeviceLostError();
      }
      const reply = replyFor(messages, sampling, thinking);
      const at = context.length - context.lastIndexOf(REPLY_START) - 1;
      const id = at < reply.length ? reply[at] : STOP;
      // Slower while thinking, so a test can watch the open thought panel.
      const delay = new TextDecoder().decode(reply.slice(0, at)).includes("</think>") ? answerMs : thinkMs;
      if (delay) await new Promise((done) => setTimeout(done, delay));
      context.push(id);
      return { id };
    },
    dispose() {},
  };
}
