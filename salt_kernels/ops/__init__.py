"""The op layer: one module per loss, each the autograd of its op. No math here (that lives in
backends/) and no argument checks (those live in _validation.py, called by functional.py)."""
