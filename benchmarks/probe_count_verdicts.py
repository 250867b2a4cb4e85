"""Teacher-forced accuracy of the counting trace's yes/no verdicts, over every held-out count problem.

    python benchmarks/probe_count_verdicts.py CHECKPOINT [THREADS]

`monologue eval` scores whole replies (50 problems); this feeds each held-out problem's whole correct conversation
and asks, at every "x vs y" step, whether the model's next token is the right verdict, split by
yes/no, by step (0, 1, 2, 3+) and by letter (only letters with a miss are listed). Run 5 of the demo
model read yes 81%, no 99%: the measurement behind the count family's letter choice.
"""

import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.data.reasoning import heldout_conversations  # noqa: E402
from training.evaluate import load_checkpoint  # noqa: E402


def main(path: str, threads: int = 2) -> None:
    torch.set_num_threads(threads)
    model, tok, _ = load_checkpoint(path)
    yes, no = tok.encode(" yes"), tok.encode(" no")
    if len(yes) != 1 or len(no) != 1:
        sys.exit(f"{path}: ' yes' / ' no' are not single tokens in its tokenizer")
    yes, no = yes[0], no[0]
    stats = collections.defaultdict(lambda: [0, 0])
    for c in heldout_conversations(300, 1, ("count",)):  # all there are (about 150)
        letter = c.key.split(":")[2]
        ids, _ = tok.render_conversation(c.messages())  # as training renders it: question, thought, answer
        with torch.no_grad():
            pred = model(torch.tensor([ids]))[0].argmax(-1).tolist()
        step = 0
        for i in range(1, len(ids)):
            if ids[i] in (yes, no):
                verdict = "yes" if ids[i] == yes else "no"
                for key in (verdict, f"{verdict} step{min(step, 3)}", f"letter {letter} {verdict}"):
                    stats[key][0] += pred[i - 1] == ids[i]
                    stats[key][1] += 1
                step += 1
    for key in sorted(stats, key=lambda s: (s.startswith("letter"), s)):
        ok, n = stats[key]
        if ok < n or not key.startswith("letter"):
            print(f"{key:16s} {ok}/{n} {ok / n:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:3]))
