"""Models built on the ops: the certified RNNs of RNNs (ModularRNN, SparseComboNet,
GlobalWorkspaceNet), the gated multi-path linear network, the small RNNs of the
temporal-superposition toolkit and their fused ensemble, and the GRU/LSTM baseline."""
from .baseline import RNNClassifier
from .gated import GatedLinearNetwork, TwoLayerLinearNetwork
from .classifiers import GlobalWorkspaceNet, SparseComboNet, SVDComboNet
from .modular import ModularRNN
from .stack import ModularRNNStack
from .small_rnn import RNNEnsemble, SmallRNN

__all__ = ["ModularRNN", "ModularRNNStack", "SparseComboNet", "SVDComboNet", "GlobalWorkspaceNet", "GatedLinearNetwork", "TwoLayerLinearNetwork", "SmallRNN", "RNNEnsemble",
           "RNNClassifier"]
