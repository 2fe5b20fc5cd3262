"""Models return (logits, features); normalisation is inside them."""
import pytest
import torch

from clustr_fast.models import build_model, default_model
from clustr_fast.models.normalize import Normalize


@pytest.mark.parametrize("name,shape,features", [
    ("mlp", (5, 2), 20), ("cnn", (5, 1, 8, 8), 64), ("resnet18", (2, 3, 32, 32), 512)])
def test_forward_returns_logits_and_features(name, shape, features):
    torch.manual_seed(0)
    net = build_model(name, 7)
    logits, feats = net(torch.rand(shape))
    assert logits.shape == (shape[0], 7) and feats.shape == (shape[0], features)
    assert torch.allclose(logits, net.fc(feats), atol=1e-5)    # logits = last linear layer on the features
    feats.sum().backward()
    assert net.fc.weight.grad is None                           # the features do not depend on the last layer
    assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("fc."))


def test_mlp_has_three_linear_layers_of_20_units():
    net = build_model("mlp", 2)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 20), (20, 20), (20, 2)]


def test_normalisation_is_inside_the_model():
    norm = Normalize([0.5, 0.25], [0.5, 2.0])
    x = torch.rand(3, 2, 4, 4)
    expect = (x - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)) / torch.tensor([0.5, 2.0]).view(1, 2, 1, 1)
    assert torch.allclose(norm(x), expect)
    net = build_model("mlp", 2, mean=[1.0, 2.0], std=[2.0, 4.0])
    ref = build_model("mlp", 2)
    ref.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("normalize")}, strict=False)
    x = torch.randn(4, 2)
    assert torch.allclose(net(x)[0], ref((x - torch.tensor([1.0, 2.0])) / torch.tensor([2.0, 4.0]))[0], atol=1e-6)
    with pytest.raises(ValueError, match="std"):
        Normalize([0.0], [0.0])


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="`name`"):
        build_model("vgg", 10)
    with pytest.raises(ValueError, match="`num_classes`"):
        build_model("cnn", 0)
    with pytest.raises(TypeError, match="bad keyword"):
        build_model("cnn", 10, depth=3)
    assert default_model("moons") == "mlp" and default_model("digits") == "cnn" and default_model("svhn") == "resnet18"
