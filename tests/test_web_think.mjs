// Unit tests for web_shell/think.js, run with `node --test` by tests/test_web_think.py.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ThinkParser } from "../web_shell/think.js";

// Feeds `pieces` one by one and returns the concatenated parts and when the tags were seen.
function run(pieces, options) {
  const parser = new ThinkParser(options);
  const result = { thought: "", answer: "", openedAt: -1, closedAt: -1 };
  const take = (out, i) => {
    result.thought += out.thought;
    result.answer += out.answer;
    if (out.opened) result.openedAt = i;
    if (out.closed) result.closedAt = i;
  };
  pieces.forEach((piece, i) => take(parser.push(piece), i));
  take(parser.end(), pieces.length);
  return result;
}

// Every way of cutting `text` into fragments of at most 3 characters is too many; these cover each
// cut position and random fragmentations.
function fragmentations(text, seed = 1) {
  const out = [[text], [...text]];
  for (let cut = 1; cut < text.length; cut++) out.push([text.slice(0, cut), text.slice(cut)]);
  let s = seed;
  const rand = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let k = 0; k < 50; k++) {
    const pieces = [];
    for (let i = 0; i < text.length; ) {
      const n = 1 + Math.floor(rand() * 4);
      pieces.push(text.slice(i, i + n));
      i += n;
    }
    out.push(pieces);
  }
  return out;
}

test("splits thought and answer", () => {
  const r = run(["<think>", "Two plus two", " is four.", "</think>", "4"]);
  assert.equal(r.thought, "Two plus two is four.");
  assert.equal(r.answer, "4");
  assert.equal(r.openedAt, 0);
  assert.equal(r.closedAt, 3);
});

test("any fragmentation gives the same result as the whole text", () => {
  const text = "\n<think>\nLet me see: a < b and </thin is not a tag.\n</think>\n\nThe answer is <b>42</b>.\n";
  for (const pieces of fragmentations(text)) {
    const r = run(pieces);
    assert.equal(r.thought, "Let me see: a < b and </thin is not a tag.", JSON.stringify(pieces));
    assert.equal(r.answer, "The answer is <b>42</b>.", JSON.stringify(pieces));
  }
});

test("tags split across tokens open and close at the right push", () => {
  const r = run(["<th", "ink", ">", "x", "</", "thi", "nk", ">", "y"]);
  assert.deepEqual(r, { thought: "x", answer: "y", openedAt: 2, closedAt: 7 });
});

test("a held-back tag prefix is not shown until it is decided", () => {
  const parser = new ThinkParser();
  assert.equal(parser.push("<think>abc</th").thought, "abc");
  const out = parser.push("ought");
  assert.equal(out.thought, "</thought");
  assert.equal(out.closed, false);
});

test("a reply without <think> is all answer", () => {
  for (const pieces of fragmentations("Just an answer, no <thinking> here.")) {
    const r = run(pieces);
    assert.equal(r.thought, "");
    assert.equal(r.answer, "Just an answer, no <thinking> here.");
    assert.equal(r.openedAt, -1);
  }
});

test("text that stops inside a tag prefix is shown literally", () => {
  assert.equal(run(["<thi"]).answer, "<thi");
  const r = run(["<think>still thinking </thi"]);
  assert.equal(r.thought, "still thinking </thi");
  assert.equal(r.closedAt, -1);
});

test("an unfinished thought keeps its text and never closes", () => {
  const r = run(["<think>", "step one", "\n", "step two", "\n\n"]);
  assert.equal(r.thought, "step one\nstep two");
  assert.equal(r.answer, "");
  assert.equal(r.closedAt, -1);
});

test("whitespace inside a part is kept, around it dropped", () => {
  const r = run(["<think>  a", " ", "\n", "b  ", "</think>  c", " ", "d ", "\n"]);
  assert.equal(r.thought, "a \nb");
  assert.equal(r.answer, "c d");
});

test("only the first </think> closes; later tags are answer text", () => {
  const r = run(["<think>t</think>a <think>b</think>"]);
  assert.equal(r.thought, "t");
  assert.equal(r.answer, "a <think>b</think>");
});

test("inThought: the prompt already opened the thought", () => {
  const r = run(["reasoning", "</think>", "done"], { inThought: true });
  assert.equal(r.thought, "reasoning");
  assert.equal(r.answer, "done");
});

test("non-ASCII text passes through unchanged", () => {
  for (const pieces of fragmentations("<think>ça fait 2×2 🤔</think>Réponse : 4")) {
    const r = run(pieces);
    assert.equal(r.thought, "ça fait 2×2 🤔");
    assert.equal(r.answer, "Réponse : 4");
  }
});
