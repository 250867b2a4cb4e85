"""The PyTorch model definitions, in one home: `gpt` (the GPT that `monologue train` trains) and
`nanochat` (nanochat's later architectures, built from a checkpoint's detected config), with `ops`,
the custom ATen ops those forwards call. training/ and the compiler's frontend both import them
from here; checkpoints store the config as data, never these classes.
"""
