"""InceptionTime, StarRNN and OmniScaleCNN: bad hyperparameters, training, checkpoints, and structural
comparison with the reference `breizhcrops` package (skipped when it does not import)."""
import copy
import importlib.metadata

import pytest
import torch
import torch.nn.functional as F

from cropkit.core import get_device, set_seed
from cropkit.models.inceptiontime import InceptionTime
from cropkit.models.omniscale import OmniScaleCNN, os_block_layer_parameters
from cropkit.models.starrnn import StarRNN

SMALL = {  # small configurations that keep the tests fast
    "inceptiontime": lambda: InceptionTime(input_dim=4, num_classes=3, num_layers=3, hidden_dims=16, kernel_size=8),
    "starrnn": lambda: StarRNN(input_dim=4, num_classes=3, hidden_dims=16, num_layers=2, dropout=0.0),
    "starrnn_bi": lambda: StarRNN(input_dim=4, num_classes=3, hidden_dims=8, num_layers=2, dropout=0.0, bidirectional=True),
    "omniscale": lambda: OmniScaleCNN(input_dim=4, num_classes=3, sequencelength=20, parameter_budgets=(64, 1024)),
}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# ---------------------------------------------------------------- bad hyperparameters and input
@pytest.mark.parametrize("make, message", [
    (lambda: InceptionTime(num_layers=0), "num_layers must be a positive integer, got 0"),
    (lambda: InceptionTime(hidden_dims=-4), "hidden_dims must be a positive integer, got -4"),
    (lambda: InceptionTime(hidden_dims=10), "hidden_dims must be a multiple of 4"),
    (lambda: InceptionTime(input_dim="13"), "input_dim must be a positive integer, got '13'"),
    (lambda: InceptionTime(use_bias=None), "use_bias must be True or False, got None"),
    (lambda: StarRNN(dropout=1), "dropout must be a number in [0, 1), got 1"),
    (lambda: StarRNN(dropout=-0.5), "dropout must be a number in [0, 1), got -0.5"),
    (lambda: StarRNN(num_classes=0), "num_classes must be a positive integer, got 0"),
    (lambda: StarRNN(num_layers=2.5), "num_layers must be a positive integer, got 2.5"),
    (lambda: StarRNN(use_batchnorm="no"), "use_batchnorm must be True or False, got 'no'"),
    (lambda: OmniScaleCNN(13, 9, None), "OmniScaleCNN needs sequencelength"),
    (lambda: OmniScaleCNN(13, 9, -45), "sequencelength must be a positive integer, got -45"),
    (lambda: OmniScaleCNN(13, 9, 45, parameter_budgets=[]), "parameter_budgets must be a non-empty sequence"),
    (lambda: OmniScaleCNN(13, 9, 45, parameter_budgets=[1024, -1]), "each parameter budget must be a positive integer, got -1"),
    (lambda: OmniScaleCNN(13, 0, 45), "num_classes must be a positive integer, got 0"),
])
def test_bad_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as e: make()
    assert message in str(e.value)


def test_omniscale_requires_sequencelength():
    with pytest.raises(TypeError): OmniScaleCNN(13, 9)  # no default: the kernel sizes depend on it


@pytest.mark.parametrize("name", list(SMALL))
def test_bad_input_is_named(name):
    model = SMALL[name]().eval()
    with pytest.raises(ValueError, match="input_dim=4 bands but the input has 5"): model(torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match=r"\(batch, time, bands\)"): model(torch.randn(10, 4))
    with pytest.raises(ValueError, match="empty time axis"): model(torch.randn(2, 0, 4))
    with pytest.raises(TypeError, match="floating point"): model(torch.ones(2, 10, 4, dtype=torch.long))


# ---------------------------------------------------------------- behaviour
@pytest.mark.parametrize("name", list(SMALL))
def test_log_probabilities_gradients_lengths(name):
    set_seed(0)
    model = SMALL[name]()
    assert model.fixed_length is False
    x = torch.randn(5, 20, 4)
    logp = model(x)
    assert logp.shape == (5, 3)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(5))
    F.nll_loss(logp, torch.tensor([0, 1, 2, 0, 1])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        for T in (1, 3, 20, 64):
            assert model(torch.randn(2, T, 4)).shape == (2, 3)
        torch.testing.assert_close(model(x[:2]), model(x)[:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(SMALL))
def test_models_learn_a_separable_problem(name):
    "A few Adam steps fit a toy problem where band 0 is shifted by the class: every model really trains."
    set_seed(0)
    model = SMALL[name]()
    y = torch.arange(24) % 3
    x = 0.3 * torch.randn(24, 16, 4)
    x[:, :, 0] += y[:, None].float() - 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.nll_loss(model(x), y)
        loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", list(SMALL))
def test_state_dict_round_trip(name, tmp_path):
    set_seed(0)
    model = SMALL[name]().eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    set_seed(1)
    other = SMALL[name]().eval()
    other.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    x = torch.randn(3, 12, 4)
    with torch.no_grad(): torch.testing.assert_close(other(x), model(x))
    clone = copy.deepcopy(model).to(get_device("cpu"))
    with torch.no_grad(): torch.testing.assert_close(clone(x), model(x))


def test_inceptiontime_all_modules_train():
    model = InceptionTime()
    registered = {id(p) for p in model.parameters()}
    for module in model.inception_modules_list:
        for conv in module.convolutions: assert id(conv.weight) in registered
    before = [p.detach().clone() for p in model.inception_modules_list.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.nll_loss(model(torch.randn(4, 24, 13)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    after = list(model.inception_modules_list.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(after, before)]
    assert all(changed[i] for i, p in enumerate(after) if p.ndim == 3)  # every convolution weight moved


def test_starrnn_layers_are_independent():
    model = StarRNN(num_layers=4)
    pointers = {layer.cell.x_K.weight.data_ptr() for layer in model.block}
    assert len(pointers) == 4
    assert sum(p.numel() for p in model.block[1].parameters()) == sum(p.numel() for p in model.block[3].parameters())


def test_starrnn_batchnorm_needs_batches_in_training():
    model = StarRNN(4, 3, 8, 1, use_batchnorm=True)
    with pytest.raises(ValueError, match="batch size 1"): model(torch.randn(1, 5, 4))
    assert model.eval()(torch.randn(1, 5, 4)).shape == (1, 3)


# ---------------------------------------------------------------- comparison with BreizhCrops
def _bc_models():
    return pytest.importorskip("breizhcrops.models")


def _bc_is_0041():
    try: return importlib.metadata.version("breizhcrops") == "0.0.4.1"
    except importlib.metadata.PackageNotFoundError: return False


def _bc_inceptiontime_state(bc):
    "BreizhCrops' InceptionTime keeps its layers in plain lists, so gather their tensors by hand under cropkit's names."
    state = {}
    for i, module in enumerate(bc.inception_modules_list):
        state.update({f"inception_modules_list.{i}.{k}": v for k, v in module.state_dict().items()})
        state.update({f"inception_modules_list.{i}.convolutions.{j}.weight": c.weight for j, c in enumerate(module.convolutions)})
    for s, layer in enumerate(bc.shortcut_layer_list[: bc.num_layers // 3]):  # the last one is never used
        state.update({f"shortcut_layer_list.{s}.{k}": v for k, v in layer.state_dict().items()})
    state.update(bc.state_dict())  # outlinear.weight, outlinear.bias: all BreizhCrops itself saves
    return state


def _bc_inception_time_state_checked(bc, ours):
    state = _bc_inceptiontime_state(bc)
    assert set(state) == set(ours.state_dict())
    return state


def _bc_inception_module_params(module):
    return sum(p.numel() for p in module.parameters()) + sum(c.weight.numel() for c in module.convolutions)


def test_inceptiontime_matches_breizhcrops_structure():
    bcm = _bc_models()
    torch.manual_seed(0)
    bc = bcm.InceptionTime(num_classes=9, input_dim=13)
    ours = InceptionTime(input_dim=13, num_classes=9)
    # per-module parameter counts are equal (counting BreizhCrops' unregistered convolutions by hand)
    for mine, theirs in zip(ours.inception_modules_list, bc.inception_modules_list, strict=True):
        assert sum(p.numel() for p in mine.parameters()) == _bc_inception_module_params(theirs)
    # BreizhCrops builds one shortcut too many; the used ones have the same size
    assert len(bc.shortcut_layer_list) == len(ours.shortcut_layer_list) + 1 == 3
    for mine, theirs in zip(ours.shortcut_layer_list, bc.shortcut_layer_list):
        assert sum(p.numel() for p in mine.parameters()) == sum(p.numel() for p in theirs.parameters())
    total_used = sum(_bc_inception_module_params(m) for m in bc.inception_modules_list) \
        + sum(p.numel() for s in bc.shortcut_layer_list[:2] for p in s.parameters()) + sum(p.numel() for p in bc.parameters())
    assert sum(p.numel() for p in ours.parameters()) == total_used == 511_561
    if _bc_is_0041():  # the bug this reimplementation fixes: only the classifier is registered
        assert list(bc.state_dict()) == ["outlinear.weight", "outlinear.bias"]


def test_inceptiontime_computes_breizhcrops_function():
    bcm = _bc_models()
    torch.manual_seed(0)
    bc = bcm.InceptionTime(num_classes=5, input_dim=13, num_layers=6, hidden_dims=32)
    ours = InceptionTime(input_dim=13, num_classes=5, num_layers=6, hidden_dims=32)
    ours.load_state_dict(_bc_inception_time_state_checked(bc, ours), strict=True)
    bc.eval(); ours.eval()
    for module in [*bc.inception_modules_list, *bc.shortcut_layer_list]: module.eval()  # bc.eval() misses them
    x = torch.randn(3, 45, 13)
    with torch.no_grad(): torch.testing.assert_close(ours(x), bc(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(hidden_dims=32, num_layers=1), dict(hidden_dims=16, num_layers=2, use_layernorm=False)])
def test_starrnn_loads_breizhcrops_checkpoint(kw):
    bcm = _bc_models()
    torch.manual_seed(0)
    bc = bcm.StarRNN(input_dim=13, num_classes=9, **kw).eval()
    ours = StarRNN(input_dim=13, num_classes=9, **kw)
    ours.load_state_dict(bc.state_dict(), strict=True)  # shared hidden layer -> a copy per layer
    ours.eval()
    x = torch.randn(4, 45, 13)
    with torch.no_grad(): torch.testing.assert_close(ours(x), bc(x), atol=1e-5, rtol=1e-5)
    # BreizhCrops shares one hidden layer among layers 2..n: cropkit has that many more parameters
    hidden_layer = sum(p.numel() for p in ours.block[-1].parameters())
    n_layers = kw.get("num_layers", 3)
    assert sum(p.numel() for p in ours.parameters()) == \
        sum(p.numel() for p in bc.parameters()) + max(n_layers - 2, 0) * hidden_layer


def test_starrnn_bidirectional_works_where_breizhcrops_fails():
    bcm = _bc_models()
    x = torch.randn(2, 10, 13)
    if _bc_is_0041():
        with pytest.raises(RuntimeError): bcm.StarRNN(bidirectional=True)(x)
    assert StarRNN(bidirectional=True)(x).shape == (2, 9)


@pytest.mark.parametrize("input_dim, sequencelength", [(13, 45), (13, 91), (10, 45), (1, 100), (4, 24), (13, 7)])
def test_omniscale_layers_match_breizhcrops(input_dim, sequencelength):
    bcm = _bc_models()
    bc = bcm.OmniScaleCNN(input_dim, 9, sequencelength)
    ours = OmniScaleCNN(input_dim, 9, sequencelength)
    assert [list(layer) for layer in bc.layer_parameter_list] == ours.layer_parameter_list
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in bc.parameters())
    assert list(ours.state_dict()) == list(bc.state_dict())


def test_omniscale_computes_breizhcrops_function():
    bcm = _bc_models()
    torch.manual_seed(0)
    bc = bcm.OmniScaleCNN(13, 9, 45).eval()
    ours = OmniScaleCNN(13, 9, 45)
    ours.load_state_dict(bc.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(3, 45, 13)
    with torch.no_grad(): torch.testing.assert_close(ours(x), bc(x), atol=1e-5, rtol=1e-5)


def test_omniscale_builds_where_breizhcrops_fails():
    "13 bands and 92+ steps: the first budget buys less than one filter per kernel size."
    bcm = _bc_models()
    with pytest.raises(ZeroDivisionError): bcm.OmniScaleCNN(13, 9, 92)
    assert os_block_layer_parameters(13, 23)[0][0] == (13, 1, 1)
    assert OmniScaleCNN(13, 9, 92).eval()(torch.randn(2, 92, 13)).shape == (2, 9)
