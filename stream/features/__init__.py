"""Per-account features: the public state layout, the reference engine (the specification),
the compiled batch kernel, and admission (duplicates, lateness) shared by serving and training."""
