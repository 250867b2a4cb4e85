// Unit tests for web_shell/context.js, run with `node --test` by tests/test_web_context.py. The same
// cases as monologue_compile/chat.py's fit_conversation in tests/test_compile_chat.py.
import assert from "node:assert/strict";
import { test } from "node:test";

import { fitConversation, MessageTooLong, replyRoom } from "../web_shell/context.js";

// One token per character of each message, plus one per message.
const encode = (messages) => new Array(messages.reduce((n, m) => n + m.content.length + (m.thought?.length ?? 0) + 1, 0)).fill(0);
const turn = (question, answer, thought) => [
  { role: "user", content: question },
  { role: "assistant", content: answer, thought },
];

test("the oldest thoughts go first, then the oldest turns", () => {
  const history = [...turn("q1", "a1", "t".repeat(20)), ...turn("q2", "a2", "t".repeat(20)), { role: "user", content: "q3" }];
  assert.equal(encode(history).length, 55);
  assert.deepEqual(fitConversation(history, encode, 65, 10).messages, history);

  let fitted = fitConversation(history, encode, 45, 10);
  assert.deepEqual([fitted.droppedTurns, fitted.droppedThoughts, fitted.promptIds.length], [0, 1, 35]);
  assert.equal("thought" in fitted.messages[1], false);
  assert.equal(fitted.messages[3].thought, "t".repeat(20));

  fitted = fitConversation(history, encode, 22, 10);
  assert.deepEqual(fitted.messages, [history[2], { role: "assistant", content: "a2" }, history[4]]);
  assert.deepEqual([fitted.droppedTurns, fitted.droppedThoughts], [1, 1]);
  assert.equal(history[1].thought, "t".repeat(20)); // the caller's conversation is left as it was
});

test("a message alone may use more than its share, not the whole context", () => {
  const history = turn("q", "a", "t");
  const fitted = fitConversation([...history, { role: "user", content: "x".repeat(69) }], encode, 100, replyRoom(100, 512));
  assert.deepEqual([fitted.promptIds.length, fitted.droppedTurns], [70, 1]);
  assert.throws(
    () => fitConversation([...history, { role: "user", content: "x".repeat(99) }], encode, 100, replyRoom(100, 512)),
    (error) =>
      error instanceof MessageTooLong &&
      error.message === "This message is 100 tokens long, but the model reads at most 100 tokens at a time, its reply included. Shorten it and send it again.",
  );
  assert.equal(replyRoom(100, 8), 8);
  assert.equal(replyRoom(100, 512), 50);
});
