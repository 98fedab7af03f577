"""Models behind one interface (interface.py): the default MLP, the transformer VLA
mock and users' own, loaded by name or import path (registry.py)."""
