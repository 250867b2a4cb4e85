// Splits a streamed reply of the form "<think>thought</think>answer" into its two parts.
//
// Text arrives in arbitrary fragments (one decoded token at a time), so a tag can be split across
// pushes: a tail that could still grow into the tag being waited for is held back until the next
// push settles it. Leading and trailing whitespace of each part is dropped (the model writes
// newlines around its tags), so trailing whitespace is also held back until more text follows it.
// A reply that does not start with <think> is all answer; after </think> everything is answer,
// including any further tags, which are shown literally.

export const OPEN = "<think>";
export const CLOSE = "</think>";

// Length of the longest suffix of `text` that is a proper prefix of `tag`.
function partialTagLength(text, tag) {
  for (let n = Math.min(text.length, tag.length - 1); n > 0; n--) {
    if (tag.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

function trailingSpaceLength(text) {
  return text.length - text.trimEnd().length;
}

export class ThinkParser {
  // inThought: the prompt already ended with <think>, so the reply starts inside the thought.
  constructor({ inThought = false } = {}) {
    this.state = inThought ? "thought" : "start"; // start | thought | answer
    this.pending = "";
    this.started = { thought: false, answer: false };
  }

  // Feeds one fragment. Returns the new visible text of each part and whether the thought opened or
  // closed during this push.
  push(text) {
    const out = { thought: "", answer: "", opened: false, closed: false };
    let buf = this.pending + text;
    this.pending = "";
    for (;;) {
      if (this.state === "start") {
        const rest = buf.trimStart();
        if (rest.startsWith(OPEN)) {
          this.state = "thought";
          out.opened = true;
          buf = rest.slice(OPEN.length);
        } else if (OPEN.startsWith(rest)) {
          this.pending = rest; // empty, or the start of "<think>"
          return out;
        } else {
          this.state = "answer";
          buf = rest;
        }
      } else if (this.state === "thought") {
        const at = buf.indexOf(CLOSE);
        if (at >= 0) {
          this.#emit(out, "thought", buf.slice(0, at).trimEnd());
          this.state = "answer";
          out.closed = true;
          buf = buf.slice(at + CLOSE.length);
        } else {
          const tag = partialTagLength(buf, CLOSE);
          const keep = tag + trailingSpaceLength(buf.slice(0, buf.length - tag));
          this.#emit(out, "thought", buf.slice(0, buf.length - keep));
          this.pending = buf.slice(buf.length - keep);
          return out;
        }
      } else {
        const keep = trailingSpaceLength(buf);
        this.#emit(out, "answer", buf.slice(0, buf.length - keep));
        this.pending = buf.slice(buf.length - keep);
        return out;
      }
    }
  }

  // The reply is over: held-back text that never became a tag is shown as what it is.
  end() {
    const out = { thought: "", answer: "", opened: false, closed: false };
    const rest = this.pending.trimEnd();
    this.pending = "";
    if (this.state === "thought") this.#emit(out, "thought", rest);
    else this.#emit(out, "answer", rest.trimStart());
    return out;
  }

  #emit(out, part, text) {
    if (!this.started[part]) {
      text = text.trimStart();
      if (text) this.started[part] = true;
    }
    out[part] += text;
  }
}
