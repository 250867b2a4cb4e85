"""The built-in, seeded corpus of reasoning conversations ("general chat + reasoning traces").

Every reasoning family draws a problem, writes a step-by-step thought for `<think>` and a short,
deterministic final answer. The thoughts are shaped for a tiny model:

- Digits are always separate tokens (the demo tokenizer is trained without digits, so it learns no
  digit merges), and every step reads only what sits right next to it: column arithmetic restates
  the operands that are left ("34+7:") so the next column is always the last digit before a
  delimiter, and the running result grows by one digit on the left ("23" -> "423").
- Every step has the same shape ("x+y+c=s"), even when a carry is 0.

Held-out problems are chosen by a stable hash of the problem itself (`problem_key`), so the same
problem is held out whatever seed or wording produced it, and training never sees it.

API: `FAMILIES` (name -> generator), `REASONING_FAMILIES`, `ABOUT` (the corpus in words), `sample_conversation(rng, family)`,
`training_conversations(n, seed)`, `heldout_conversations(n_per_family, seed)`, `is_heldout(key)`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

HELDOUT_PERCENT = 5  # share of each family's problem space reserved for evaluation


@dataclass
class Conversation:
    """One user question and the assistant's thought and answer, plus what evaluation needs."""

    family: str
    key: str  # canonical problem identity: the held-out split hashes this
    user: str
    thought: str
    answer: str

    def messages(self) -> list[dict]:
        return [
            {"role": "user", "content": self.user},
            {"role": "assistant", "thought": self.thought, "content": self.answer},
        ]


def is_heldout(key: str) -> bool:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100 < HELDOUT_PERCENT


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


# --- column arithmetic -------------------------------------------------------------------------


def addition_thought(a: int, b: int) -> str:
    """Right-to-left columns with explicit carries; each step restates the digits still to add."""
    rest_a, rest_b, carry, result, steps = str(a), str(b), 0, "", []
    while rest_a or rest_b or carry:
        x, y = int(rest_a[-1]) if rest_a else 0, int(rest_b[-1]) if rest_b else 0
        s = x + y + carry
        result = str(s % 10) + result
        steps.append(f"{rest_a or 0}+{rest_b or 0}: {x}+{y}+{carry}={s}, {result} carry {s // 10}.")
        rest_a, rest_b, carry = rest_a[:-1], rest_b[:-1], s // 10
    return " ".join(steps) + f" Answer {int(result)}."


def subtraction_thought(a: int, b: int) -> str:
    """Right-to-left columns with explicit borrows (a >= b). A column is two steps of two operands
    each, as multiplication's are: the borrow is added to the lower digit first ("9+1=10"), then that
    is taken from the upper digit, borrowing ten when it is larger ("2-10 is negative, 12-10=2"). The
    one-step form ("2-9-1 is negative, 12-9-1=2") is a three-operand fact, and its borrow columns were
    where the demo model went wrong ("12-9-1=3", "9-8-1 is negative")."""
    rest_a, rest_b, borrow, result, steps = str(a), str(b), 0, "", []
    while rest_a:
        x, y = int(rest_a[-1]), int(rest_b[-1]) if rest_b else 0
        lower = y + borrow
        d = x - lower
        head = f"{rest_a}-{rest_b or 0}: {y}+{borrow}={lower}, "
        if d < 0:
            result = str(d + 10) + result
            steps.append(f"{head}{x}-{lower} is negative, 1{x}-{lower}={d + 10}, {result} borrow 1.")
        else:
            result = str(d) + result
            steps.append(f"{head}{x}-{lower}={d}, {result} borrow 0.")
        rest_a, rest_b, borrow = rest_a[:-1], rest_b[:-1], int(d < 0)
    return " ".join(steps) + f" Answer {int(result)}."


def multiplication_thought(a: int, m: int) -> str:
    """Multiply by one digit right to left. A column is two small steps, a times-table fact and then
    adding the carry ("7*6=42, 42+4=46"), since one step that does both is a 720-entry lookup a
    small model learns slowly; the last carry gets a column of its own ("0*6")."""
    rest, carry, result, steps = str(a), 0, "", []
    while rest or carry:
        x = int(rest[-1]) if rest else 0
        p = x * m
        s = p + carry
        result = str(s % 10) + result
        steps.append(f"{rest or 0}*{m}: {x}*{m}={p}, {p}+{carry}={s}, {result} carry {s // 10}.")
        rest, carry = rest[:-1], s // 10
    return " ".join(steps) + f" Answer {int(result)}."


def _add(rng: random.Random) -> Conversation:
    a, b = _number(rng, 1, 3), _number(rng, 1, 3)
    user = rng.choice(["What is {a} + {b}?", "Compute {a} + {b}.", "{a} + {b} = ?", "Add {a} and {b}.", "What do you get when you add {a} and {b}?"])
    return Conversation("add", f"add:{a}:{b}", user.format(a=a, b=b), addition_thought(a, b), f"{a} + {b} = {a + b}.")


def _sub(rng: random.Random) -> Conversation:
    a, b = sorted((_number(rng, 1, 3), _number(rng, 1, 3)), reverse=True)
    user = rng.choice(["What is {a} - {b}?", "Compute {a} - {b}.", "{a} - {b} = ?", "Subtract {b} from {a}.", "What is {a} minus {b}?"])
    return Conversation("sub", f"sub:{a}:{b}", user.format(a=a, b=b), subtraction_thought(a, b), f"{a} - {b} = {a - b}.")


def _mul(rng: random.Random) -> Conversation:
    a, m = _number(rng, 1, 3), rng.randint(2, 9)
    user = rng.choice(["What is {a} * {m}?", "Compute {a} times {m}.", "Multiply {a} by {m}.", "{a} * {m} = ?", "What is {m} times {a}?"])
    return Conversation("mul", f"mul:{a}:{m}", user.format(a=a, m=m), multiplication_thought(a, m), f"{a} * {m} = {a * m}.")


def comparison_thought(a: int, b: int) -> str:
    """Two passes that each read only the digits next to a delimiter, as the column traces do. Length:
    drop the last digit of both until one runs out ("4712 vs 87, 471 vs 8, 47 vs none"); counting
    digits and then comparing the counts was where the demo model went wrong. Same length: from the
    left, compare the first digits and restate what is left ("096 vs 069: 0=0.")."""
    sa, sb = str(a), str(b)
    steps, x, y = [], sa, sb
    while x and y:
        steps.append(f"{x} vs {y}")
        x, y = x[:-1], y[:-1]
    steps.append(f"{x or 'none'} vs {y or 'none'}")
    if len(sa) != len(sb):
        longer = a if len(sa) > len(sb) else b
        return f"Lengths: {', '.join(steps)}: {longer} is longer. So {longer} is larger."
    out = f"Lengths: {', '.join(steps)}: same. From the left:"
    x, y = sa, sb
    while x[0] == y[0]:
        out += f" {x} vs {y}: {x[0]}={y[0]}."
        x, y = x[1:], y[1:]
    out += f" {x} vs {y}: {x[0]}{'>' if x[0] > y[0] else '<'}{y[0]}."
    return out + f" So {max(a, b)} is larger."


def _compare(rng: random.Random) -> Conversation:
    a = _number(rng, 1, 4)
    # Mostly equal lengths, so the digit-by-digit comparison is what gets practised.
    b = _number(rng, len(str(a)), len(str(a))) if rng.random() < 0.7 else _number(rng, 1, 4)
    while b == a:
        b = _number(rng, 1, 4)
    user = rng.choice(["Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?", "Is {a} or {b} greater?", "What is the larger of {a} and {b}?"])
    larger = max(a, b)
    return Conversation("compare", f"compare:{min(a, b)}:{larger}", user.format(a=a, b=b), comparison_thought(a, b), f"{larger} is larger.")


WORDS = (
    "apple banana cherry strawberry orange grape lemon melon peach pear mango tomato potato carrot "
    "pepper garden window kitchen bottle pencil paper letter number banana river mountain valley forest "
    "island ocean planet rocket engine bridge castle dragon rabbit turtle monkey giraffe elephant tiger "
    "kitten puppy butterfly spider mirror pillow blanket candle basket bicycle camera guitar piano violin "
    "coffee cookie butter cheese pizza pasta noodle sugar honey summer winter spring autumn morning evening "
    "yellow purple silver golden hello world computer keyboard program science history music teacher "
    "student doctor farmer painter library hospital school market office tunnel balloon umbrella mississippi "
    "committee address coconut pineapple broccoli zebra penguin dolphin squirrel raccoon"
).split()
WORDS = tuple(dict.fromkeys(WORDS))  # drop repeats, keep order


def counting_thought(word: str, letter: str) -> str:
    """Spell the word one letter per token and set each letter beside the one counted ("e vs r no 0")
    before the running tally: the verdict then compares two neighbouring tokens instead of fetching the
    letter from the question far back (where the demo model said yes at the wrong letter), and the
    tally only adds that yes to the tally one step back."""
    tally, steps = 0, []
    for ch in word:
        tally += ch == letter
        steps.append(f"{ch} vs {letter} {'yes' if ch == letter else 'no'} {tally}")
    return f"Spell {word} and count {letter}: " + ", ".join(steps) + f". So {tally}."


def _count(rng: random.Random) -> Conversation:
    word = rng.choice(WORDS)
    # Mostly a letter the word has, each of its letters alike (the first and the rare ones as often as
    # the common ones): a "yes" verdict is the rare step of a trace, and the demo model got it wrong
    # five times as often as a "no" (teacher-forced, 81% against 99%).
    letter = rng.choice(sorted(set(word))) if rng.random() < 0.9 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    user = rng.choice([
        "How many times does the letter {l} appear in {w}?",
        "How many {l}'s are in the word {w}?",
        "How many {l}'s in {w}?",
        "Count the letter {l} in {w}.",
        "How many {l}s does {w} have?",
    ])
    tally = word.count(letter)
    plural = "time" if tally == 1 else "times"
    # The answer does not name the word again: fetched from the question, far back, the demo model
    # named another word ("appears 2 times in violin" for office) after a right count.
    return Conversation("count", f"count:{word}:{letter}", user.format(l=letter, w=word), counting_thought(word, letter),
                        f"The letter {letter} appears {tally} {plural}.")


def _spell(rng: random.Random) -> Conversation:
    """Spelling: the first step of counting ("Spell strawberry"), on its own. Copying the asked word
    out of the question was where the demo model's counting failed (it spelled a word it had seen
    with that letter before); this family gives that copy as many examples again."""
    word = rng.choice(WORDS)
    user = rng.choice(["How do you spell {w}?", "Spell {w}.", "Spell the word {w}.", "How is {w} spelled?"])
    return Conversation("spell", f"spell:{word}", user.format(w=word), f"Spell {word}: {' '.join(word)}.", " ".join(word))


NAMES = ("Tom", "Anna", "Sam", "Maria", "Leo", "Emma", "Noah", "Lily", "Omar", "Zoe", "Ivan", "Mia")
ITEMS = ("apples", "books", "marbles", "coins", "stickers", "pencils", "cookies", "cards", "shells", "stamps")


def _word(rng: random.Random) -> Conversation:
    """A short story around one operation: the thought first writes it as the bare equation, then
    solves it with exactly the trace of that operation's own family."""
    name, item, op = rng.choice(NAMES), rng.choice(ITEMS), rng.choice("+-*")
    if op == "+":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        user = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        x, y, trace, result = a, b, addition_thought(a, b), a + b
    elif op == "-":
        a = rng.randint(4, 99)
        b = rng.randint(1, a - 2)
        user = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        x, y, trace, result = a, b, subtraction_thought(a, b), a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 99)
        user = f"{name} has {a} boxes with {b} {item} in each box. How many {item} is that in total?"
        x, y, trace, result = b, a, multiplication_thought(b, a), a * b
    # The answer is the equation with its result, as in the bare families: an answer that named the
    # item ("170 stickers.") had the demo model fetch the item from the question, and it guessed one.
    return Conversation("word", f"word:{op}:{a}:{b}", user, f"Equation: {x} {op} {y}. {trace}", f"{x} {op} {y} = {result}.")


# Plain chat: a short thought and a short reply, from a small built-in set (never held out).
CHAT = (
    ("Hello!", "The user greets me. I greet them back.", "Hello! How can I help you today?"),
    ("Hi", "A greeting. I say hi and offer help.", "Hi! What would you like to know?"),
    ("Hey there", "A greeting. I reply in kind.", "Hey! Ask me a math question or anything else."),
    ("Good morning!", "The user says good morning. I return it.", "Good morning! How can I help?"),
    ("How are you?", "The user asks how I am. I answer briefly.", "I am doing well, thank you. How can I help?"),
    ("Who are you?", "The user asks who I am. I explain what I am.", "I am Monologue, a small model that thinks before it answers, running in your browser."),
    ("What can you do?", "The user asks about my abilities. I list them.", "I can add, subtract, multiply by a digit, compare numbers, count letters and solve short word problems."),
    ("Thank you!", "The user thanks me. I respond politely.", "You are welcome!"),
    ("Thanks", "The user thanks me. I respond politely.", "Happy to help!"),
    ("Goodbye", "The user says goodbye. I say goodbye too.", "Goodbye! Have a nice day."),
    ("What is the capital of France?", "A geography fact: the capital of France is Paris.", "The capital of France is Paris."),
    ("What is the capital of Japan?", "A geography fact: the capital of Japan is Tokyo.", "The capital of Japan is Tokyo."),
    ("What is the capital of Italy?", "A geography fact: the capital of Italy is Rome.", "The capital of Italy is Rome."),
    ("What is the largest planet?", "Astronomy: the largest planet in the solar system is Jupiter.", "Jupiter is the largest planet in the solar system."),
    ("What color is the sky?", "On a clear day the sky looks blue.", "The sky is blue on a clear day."),
    ("How many days are in a week?", "A week has seven days.", "A week has 7 days."),
    ("How many legs does a spider have?", "Spiders are arachnids with eight legs.", "A spider has 8 legs."),
    ("What do bees make?", "Bees collect nectar and make honey.", "Bees make honey."),
    ("What is water made of?", "Water is a molecule of two hydrogen atoms and one oxygen atom.", "Water is made of hydrogen and oxygen: H2O."),
    ("Is the sun a star?", "The sun is a star, the closest one to Earth.", "Yes, the sun is a star."),
    ("Where do you run?", "The user asks where I run. I run locally in the browser.", "I run entirely in your browser; nothing you type leaves this page."),
    ("Tell me a joke", "A short, friendly joke about numbers.", "Why was six afraid of seven? Because seven ate nine."),
)


def _chat(rng: random.Random) -> Conversation:
    user, thought, answer = rng.choice(CHAT)
    return Conversation("chat", f"chat:{user}", user, thought, answer)


# What a model trained on this corpus can do, in words for its users: training records it in the
# checkpoint's meta, and the chat page shows it with the examples as questions to try.
ABOUT = {
    "summary": ("A small demo model trained only on Monologue's built-in exercises: it adds and subtracts whole "
                "numbers up to 999, multiplies a number up to 999 by one digit, says which of two numbers up to "
                "9999 is larger, counts a letter in one of about a hundred common words, and solves one-step word "
                "problems, writing out its working first. Beyond that it knows a few greetings."),
    "examples": ["How many r's in strawberry?", "What is 347 * 6?", "What is 905 - 478?", "Which is larger, 4096 or 4069?",
                 "Tom has 4 boxes with 12 marbles in each box. How many marbles is that in total?"],
}

FAMILIES = {"add": _add, "sub": _sub, "mul": _mul, "compare": _compare, "count": _count, "spell": _spell, "word": _word, "chat": _chat}
# Families trained but not evaluated: greetings, and spelling, which is there to teach counting its
# first step (a word left out of its spelling problems was spelled wrong: 0 of 8 held-out words; the
# counting trace spells every word correctly).
REASONING_FAMILIES = tuple(name for name in FAMILIES if name not in ("chat", "spell"))
# add and sub are learnt first; the families with longer traces (mul, count, word) get the larger shares,
# count the largest: its copy of the asked word and its yes verdicts formed in only some runs with less
# (four AdamW runs of mixes near this one: count 60-100%, the other families 74-100%; README).
DEFAULT_MIX = {"add": 0.09, "sub": 0.11, "mul": 0.19, "compare": 0.10, "count": 0.30, "spell": 0.04, "word": 0.13, "chat": 0.04}


def sample_conversation(rng: random.Random, family: str) -> Conversation:
    """One conversation of `family` (held-out problems included: filter with `is_heldout`)."""
    return FAMILIES[family](rng)


def training_conversations(n: int, seed: int, mix: dict[str, float] | None = None):
    """Yield n conversations drawn by `mix` weights, never a held-out problem."""
    mix = mix or DEFAULT_MIX
    rng = random.Random(seed)
    names, weights = list(mix), list(mix.values())
    produced = 0
    while produced < n:
        conversation = sample_conversation(rng, rng.choices(names, weights)[0])
        if conversation.family != "chat" and is_heldout(conversation.key):
            continue
        produced += 1
        yield conversation


def heldout_conversations(n_per_family: int, seed: int = 0, families=REASONING_FAMILIES) -> list[Conversation]:
    """Up to n distinct held-out problems per reasoning family (fewer if the family has fewer)."""
    rng = random.Random(seed)
    out = []
    for family in families:
        seen: dict[str, Conversation] = {}
        draws_since_new = 0  # a family with fewer held-out problems than asked runs dry: stop there
        while len(seen) < n_per_family and draws_since_new < 100_000:
            conversation = sample_conversation(rng, family)
            draws_since_new += 1
            if is_heldout(conversation.key) and conversation.key not in seen:
                seen[conversation.key] = conversation
                draws_since_new = 0
        out.extend(seen.values())
    return out
