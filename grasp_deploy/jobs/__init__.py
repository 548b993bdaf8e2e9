"""The jobs: prune, export, evaluate, zero-shot, serve, bench and prune-and-serve, each a
typed config and one ``run_*`` function composed from methods, checkpoint, sources and core."""
