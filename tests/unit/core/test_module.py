"""core/module.py and core/nets.py: LitClassifier and the networks."""

import torch

from mnistlit.core.module import LitClassifier
from mnistlit.core.nets import Net, SpeedrunNet, StrongNet
from tests.helpers import draw_digits


def test_the_seed_net_keeps_its_shape_and_parameter_count() -> None:
    net = Net()
    assert net(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    assert sum(p.numel() for p in net.parameters()) == 53_994
    assert list(net.state_dict())[:2] == ["layers.0.weight", "layers.0.bias"]


def test_the_speedrun_net_maps_digits_to_ten_logits() -> None:
    net = SpeedrunNet()
    assert net(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    assert sum(p.numel() for p in net.parameters()) == 212_682


def test_the_strong_net_maps_digits_to_ten_logits() -> None:
    net = StrongNet()
    assert net(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    assert sum(p.numel() for p in net.parameters()) == 131_690
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 4


def test_training_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    images, labels = draw_digits(256, seed=3)
    x = ((torch.from_numpy(images).float() / 255 - 0.1307) / 0.3081).unsqueeze(1)
    y = torch.from_numpy(labels).long()
    model = LitClassifier(optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    optimizer = model.configure_optimizers()
    model.train()
    with torch.no_grad():
        before = model.loss_fn(model(x), y).mean().item()
    for _ in range(30):
        optimizer.zero_grad()
        model.loss_fn(model(x), y).mean().backward()
        optimizer.step()
    with torch.no_grad():
        after = model.loss_fn(model(x), y).mean().item()
    assert after < 0.5 * before


def test_python_use_without_the_cli_has_working_defaults() -> None:
    model = LitClassifier()
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert isinstance(model.net, Net)
    # Only plain data: the network, optimizer and scheduler are objects here, which a
    # weights_only load of the checkpoint would refuse.
    assert set(model.hparams) == {"compile", "lr_scheduler_interval", "num_classes"}
