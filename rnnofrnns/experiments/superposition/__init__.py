"""Temporal superposition (Sharma et al., 2026): the k-delay recall task, the geometry of
trained small RNNs and the sparsity-grid experiment (`python -m rnnofrnns superposition`)."""
