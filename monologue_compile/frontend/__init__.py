"""Frontend: load a checkpoint into an nn.Module (load.py) and trace it to an fx graph of ATen ops (trace.py)."""
