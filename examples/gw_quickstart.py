"""Build a global-workspace net, certify it, train a few steps, ablate an area."""
import torch
from rnnofrnns import GlobalWorkspaceNet

torch.manual_seed(0)
net = GlobalWorkspaceNet(input_size=8, output_size=10, num_areas=16, area_size=32, alpha=0.5)
print(net.certify())                                    # both certificates hold at initialisation
print("trainable inter-area weights:", net.num_feedback_parameters())

x, y = torch.randn(64, 8, 8), torch.randint(0, 10, (64,))   # [batch, time, features]
opt = torch.optim.Adam(net.parameters(), lr=0.05)
for step in range(20):
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(f"loss after 20 steps: {loss.item():.3f}")
print(net.certify())                                    # still certified: the parameterisation guarantees it

with net.ablate(3):                                     # silence area 3
    acc = (net(x).argmax(1) == y).float().mean()
print(f"accuracy on the training batch with area 3 silenced: {acc:.2f}")
