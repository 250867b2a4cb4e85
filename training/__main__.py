"""`python -m training ...` is `monologue ...`; it gives torchrun a module to launch:

    torchrun --standalone --nproc_per_node=8 -m training train --preset d20 --out runs/d20
"""

from monologue_compile.cli import main

main()
