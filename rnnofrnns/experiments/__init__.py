"""Experiments built on the models: the training job on real data (training/), the
flexible task abstractions (task_switching/) and temporal superposition (superposition/).
Each has its own command (cli.py) for `python -m rnnofrnns`."""
