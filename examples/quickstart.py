"""The README's quickstart: train a certified global-workspace net on the bundled digits."""
import torch
import torch.nn.functional as F

from rnnofrnns import GlobalWorkspaceNet
from rnnofrnns.experiments.training import load_task

data = load_task("row-digits", seed=0)        # scikit-learn's 8x8 digits, one row per step
torch.manual_seed(0)
net = GlobalWorkspaceNet(data.input_size, data.num_classes)  # 16 areas of 32 units, the certified default
opt = torch.optim.Adam(net.parameters(), lr=0.01)
for epoch in range(20):
    for batch in torch.randperm(len(data.y_train)).split(64):
        loss = F.cross_entropy(net(data.x_train[batch]), data.y_train[batch])
        opt.zero_grad(); loss.backward(); opt.step()
with torch.no_grad():
    accuracy = (net(data.x_test).argmax(1) == data.y_test).float().mean().item()
print(f"test accuracy {accuracy:.3f}")
print(net.certify())                          # both certificates hold for the trained weights
