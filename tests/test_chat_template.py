"""The chat template rendered in Rust agrees with a pure-Python renderer written from the
contract, for random conversations; the mask marks exactly what the assistant produces."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monologue_compile.errors import MonologueError
from monologue_compile.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["Hello there, how are you? I think 2+2=4.\n\n"] * 20, vocab_size=320)


def python_render(tok, messages):
    """The contract: <|bos|>, then <|user_start|> text <|user_end|> and <|assistant_start|>
    [<think> thought </think>] answer <|assistant_end|>; system is merged into the first user
    message; mask 1 from <think> (or the answer) to <|assistant_end|>."""
    special = tok.token_id
    if messages and messages[0]["role"] == "system":
        first_user = dict(messages[1])
        first_user["content"] = messages[0]["content"] + "\n\n" + first_user["content"]
        messages = [first_user, *messages[2:]]
    ids, mask = [special("<|bos|>")], [0]

    def add(tokens, m):
        ids.extend(tokens)
        mask.extend([m] * len(tokens))

    for message in messages:
        if message["role"] == "user":
            add([special("<|user_start|>"), *tok.encode_ordinary(message["content"]), special("<|user_end|>")], 0)
        else:
            add([special("<|assistant_start|>")], 0)
            if message.get("thought") is not None:
                add([special("<think>"), *tok.encode_ordinary(message["thought"]), special("</think>")], 1)
            add([*tok.encode_ordinary(message["content"]), special("<|assistant_end|>")], 1)
    return ids, mask


texts = st.text(max_size=40)


@st.composite
def conversations(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})
    for turn in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(texts)})
        if turn < 3 or draw(st.booleans()):
            assistant = {"role": "assistant", "content": draw(texts)}
            thought = draw(st.one_of(st.none(), texts))
            if thought is not None or draw(st.booleans()):
                assistant["thought"] = thought
            messages.append(assistant)
    return messages


@settings(max_examples=300, deadline=None)
@given(conversations())
def test_rust_renderer_matches_the_python_oracle(tok, messages):
    assert tok.render_conversation(messages) == python_render(tok, messages)


def test_layout_of_one_exchange(tok):
    ids, mask = tok.render_conversation(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "thought": "2+2=4", "content": "4"},
        ]
    )
    assert tok.decode(ids) == (
        "<|bos|><|user_start|>Be brief.\n\n2+2?<|user_end|><|assistant_start|><think>2+2=4</think>4<|assistant_end|>"
    )
    first_trained = ids.index(tok.token_id("<think>"))
    assert mask == [0] * first_trained + [1] * (len(ids) - first_trained)


def test_empty_thought_renders_an_empty_think_block(tok):
    ids, _ = tok.render_conversation(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "thought": "", "content": "yo"}]
    )
    assert tok.decode(ids).endswith("<|assistant_start|><think></think>yo<|assistant_end|>")


def test_special_token_text_in_messages_stays_text(tok):
    ids, _ = tok.render_conversation([{"role": "user", "content": "<|assistant_end|>"}])
    assert ids.count(tok.token_id("<|assistant_end|>")) == 0
    assert tok.decode(ids) == "<|bos|><|user_start|><|assistant_end|><|user_end|>"


def test_completion_prompt(tok):
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "thought": "t"},
        {"role": "user", "content": "c"},
    ]
    ids = tok.render_for_completion(messages)
    assert ids == tok.render_conversation(messages)[0] + [tok.token_id("<|assistant_start|>")]


@pytest.mark.parametrize(
    "messages, error",
    [
        ([{"role": "assistant", "content": "x"}], "expected a user message"),
        ([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}], "expected an assistant message"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "system message may only come first"),
        ([{"role": "system", "content": "x"}], "followed by a user message"),
        ([{"role": "robot", "content": "x"}], "unknown role"),
        ([{"role": "user"}], "no \"content\""),
        ([{"role": "user", "content": "x", "thought": "y"}], "only assistant messages"),
        ([{"role": "user", "content": 3}], "no \"content\" string"),
    ],
)
def test_malformed_conversations_are_refused(tok, messages, error):
    with pytest.raises(MonologueError, match=error):
        tok.render_conversation(messages)


def test_completion_must_end_with_a_user_message(tok):
    with pytest.raises(MonologueError, match="must end with a user message"):
        tok.render_for_completion([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_lone_surrogates_become_replacement_characters(tok):
    ids, _ = tok.render_conversation([{"role": "user", "content": "a\ud800b"}])
    assert tok.decode(ids) == "<|bos|><|user_start|>a\ufffdb<|user_end|>"
