// One reply: prefill the prompt, then sample token by token until a stop token, the token limit, or
// an abort. When the engine's GPU device is lost mid-reply, the whole context so far (prompt and
// the tokens already shown) is prefilled into a fallback engine and the reply continues there.

import { DeviceLostError } from "./engine.js";

// A macrotask boundary, so that a "stop" message can be handled between two tokens even when an
// engine's step() resolves at once. setTimeout would cost at least 4 ms per token once nested.
function nextTask() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

// engine: an Engine (see engine.js). fallback(error) -> Promise<Engine> | null: the engine to
// continue on after a device loss. onToken(id), onSwitch(engine, error): progress callbacks.
// Returns {engine, reason: "end" | "length" | "stopped", tokens: number[]}; engine is the one the
// reply finished on.
export async function generateReply({ engine, promptIds, sampling, maxNewTokens, signal, fallback, onToken, onSwitch }) {
  const context = [...promptIds];
  const tokens = [];
  let primed = false;
  for (;;) {
    try {
      if (!primed) {
        await engine.reset(sampling);
        await engine.prefill(context);
        primed = true;
      }
      await nextTask();
      if (signal?.aborted) return { engine, reason: "stopped", tokens };
      if (tokens.length >= maxNewTokens) return { engine, reason: "length", tokens };
      const { id } = await engine.step();
      if (engine.tokenizer.isStop(id)) return { engine, reason: "end", tokens };
      context.push(id);
      tokens.push(id);
      onToken(id);
    } catch (error) {
      if (!(error instanceof DeviceLostError) || !fallback) throw error;
      engine.dispose();
      engine = await fallback(error);
      onSwitch(engine, error);
      primed = false;
    }
  }
}
