// Keeps a conversation within what the model can read (its sequence_len, prompt and reply together).
//
// When the next prompt would leave the reply too little room, the oldest assistant thoughts go
// first (the answers they led to stay, so later turns still see what was said), then the oldest
// turns, a question together with its reply. A message alone may take more than its share (its reply
// is then cut by the context, and says so); one the model cannot read at all, its reply included, is
// refused. monologue_compile/chat.py applies the same policy in the terminal.

// Tokens kept free for the reply: what the visitor asked for, but never more than half the context,
// so that a large max-new-tokens setting does not leave almost no room for the conversation.
export function replyRoom(contextLimit, maxNewTokens) {
  return Math.max(1, Math.min(maxNewTokens, Math.floor(contextLimit / 2)));
}

export class MessageTooLong extends Error {
  constructor(tokens, contextLimit) {
    super(
      `This message is ${tokens} tokens long, but the model reads at most ${contextLimit} tokens at a time, ` +
        "its reply included. Shorten it and send it again.",
    );
    this.name = "MessageTooLong";
    Object.assign(this, { tokens, contextLimit });
  }
}

// messages: the conversation, ending with the user's new message; encode(messages) -> prompt ids.
// Returns {messages, promptIds, droppedTurns, droppedThoughts}: the conversation as it will be read
// (a new array; the messages in it are copies where a thought was taken out), the number of turns
// left out, and the number of thoughts taken out of the turns that stay.
export function fitConversation(messages, encode, contextLimit, room) {
  const budget = contextLimit - room;
  let kept = messages.slice();
  let promptIds = encode(kept);
  const stripped = new Set();
  let droppedTurns = 0;
  for (let i = 0; promptIds.length > budget && i < kept.length - 1; i++) {
    if (kept[i].role !== "assistant" || kept[i].thought === undefined) continue;
    const { thought: _, ...answer } = kept[i];
    kept[i] = answer;
    stripped.add(answer);
    promptIds = encode(kept);
  }
  while (promptIds.length > budget && kept.length > 1) {
    // A turn is a user message and the replies up to the next one.
    let end = 1;
    while (end < kept.length - 1 && kept[end].role !== "user") end += 1;
    kept = kept.slice(end);
    droppedTurns += 1;
    promptIds = encode(kept);
  }
  if (promptIds.length >= contextLimit) throw new MessageTooLong(promptIds.length, contextLimit);
  const droppedThoughts = kept.filter((m) => stripped.has(m)).length;
  return { messages: kept, promptIds, droppedTurns, droppedThoughts };
}
