"""Training side of Monologue: data, the train loop and eval for the GPT in monologue_compile/models/gpt.py."""
