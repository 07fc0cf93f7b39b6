"""cropkit models loaded with BreizhCrops weights compute what the BreizhCrops models compute.

Each test builds a randomly initialised model of the reference `breizhcrops` package (0.0.4.1), randomises its
BatchNorm statistics so that evaluation mode is exercised, hands its weights to
`cropkit.models.registry.load_breizhcrops_checkpoint` and compares the log-probabilities in eval mode.
Skipped when `breizhcrops` is not importable (it is not a cropkit dependency).
"""
import warnings

import pytest
import torch
from torch import nn

bcm = pytest.importorskip("breizhcrops.models", reason="the reference package `breizhcrops` is not installed "
                          "(pip install --no-deps breizhcrops==0.0.4.1 to run these comparisons)")

from cropkit.models.registry import breizhcrops_state_dict, infer_breizhcrops_hparams, load_breizhcrops_checkpoint

ATOL = 1e-5


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    "Give every BatchNorm non-trivial affine parameters and running statistics, then switch to eval mode."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g)); m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g)); m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def _compare(bc_model: nn.Module, name: str, x: torch.Tensor, source=None, **hparams):
    bc_model = _randomise_batchnorm(bc_model)
    ours = load_breizhcrops_checkpoint({"model_state": bc_model.state_dict()} if source is None else source, name, **hparams)
    assert not ours.training
    with torch.no_grad():
        expected, got = bc_model(x), ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    return ours


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(4, 45, 13)


def test_tempcnn_defaults(x, tmp_path):
    torch.manual_seed(1)
    bc = _randomise_batchnorm(bcm.TempCNN(input_dim=13, num_classes=9, sequencelength=45))
    torch.save({"model_state": bc.state_dict()}, tmp_path / "tempcnn.pth")  # through a real file
    _compare(bc, "TempCNN", x, source=tmp_path / "tempcnn.pth")


def test_tempcnn_other_sizes():
    torch.manual_seed(2)
    bc = bcm.TempCNN(input_dim=10, num_classes=5, sequencelength=30, kernel_size=5, hidden_dims=16)
    ours = _compare(bc, "tempcnn", torch.randn(3, 30, 10))
    assert ours.cropkit_spec["hparams"]["kernel_size"] == 5 and ours.cropkit_spec["sequencelength"] == 30


def test_lstm_defaults(x):
    torch.manual_seed(3)
    _compare(bcm.LSTM(input_dim=13, num_classes=9), "LSTM", x)


def test_lstm_unidirectional_two_layers():
    torch.manual_seed(4)
    ours = _compare(bcm.LSTM(input_dim=6, num_classes=4, hidden_dims=16, num_layers=2, bidirectional=False), "lstm",
                    torch.randn(3, 20, 6))
    assert ours.cropkit_spec["hparams"]["bidirectional"] is False


def test_transformer_encoder(x):
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BreizhCrops' nested-tensor warning
        bc = bcm.TransformerModel(input_dim=13, num_classes=9)
    _compare(bc, "TransformerEncoder", x)


def test_transformer_other_sizes():
    torch.manual_seed(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bc = bcm.TransformerModel(input_dim=13, num_classes=4, d_model=32, n_head=4, n_layers=2, d_inner=64)
    _compare(bc, "transformer", torch.randn(2, 30, 13), n_head=4)  # heads are not visible in the shapes


def test_pe_transformer(x):
    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bc = bcm.PETransformerModel(input_dim=13, num_classes=9)
    ours = _compare(bc, "PETransformerModel", x)
    assert ours.cropkit_spec["hparams"]["max_len"] == 200


def test_msresnet(x):
    torch.manual_seed(8)
    _compare(bcm.MSResNet(input_dim=13, num_classes=9), "MSResNet", x)  # batch > 1: BreizhCrops squeezes a batch of 1


def test_msresnet_any_length():
    torch.manual_seed(9)
    _compare(bcm.MSResNet(input_dim=13, num_classes=9, hidden_dims=8), "msresnet", torch.randn(3, 70, 13))


def test_starrnn(x):
    torch.manual_seed(10)
    bc = bcm.StarRNN(input_dim=13, num_classes=9)  # its hidden layers share one module; cropkit gets copies
    ours = _compare(bc, "StarRNN", x)
    assert ours.cropkit_spec["hparams"]["num_layers"] == 3


def test_omniscalecnn(x):
    torch.manual_seed(11)
    bc = bcm.OmniScaleCNN(input_dim=13, num_classes=9, sequencelength=45)
    ours = _compare(bc, "OmniScaleCNN", x)
    assert ours.cropkit_spec["sequencelength"] == 44  # 4 × largest prime kernel (11): the same kernels as 45


def test_inceptiontime_from_model_object(x):
    torch.manual_seed(12)
    bc = _randomise_batchnorm(bcm.InceptionTime(num_classes=9, input_dim=13))
    # not in bc.state_dict(): BatchNorms of modules kept in plain lists; randomise them explicitly
    for i, module in enumerate(bc.inception_modules_list + bc.shortcut_layer_list):
        _randomise_batchnorm(module, seed=100 + i)
    full = breizhcrops_state_dict(bc)
    assert len(full) > len(bc.state_dict())
    _compare(bc, "InceptionTime", x, source=bc)


def test_inceptiontime_checkpoint_is_incomplete():
    torch.manual_seed(13)
    bc = bcm.InceptionTime(num_classes=9, input_dim=13)
    state = bc.state_dict()
    assert sorted(state) == ["outlinear.bias", "outlinear.weight"]  # BreizhCrops' plain-list bug
    assert infer_breizhcrops_hparams(state, "InceptionTime") == dict(num_classes=9, hidden_dims=128)
    with pytest.raises(ValueError, match="plain Python lists"):
        load_breizhcrops_checkpoint({"model_state": state}, "InceptionTime")
    with pytest.warns(UserWarning, match="left at random initialisation"):
        ours = load_breizhcrops_checkpoint({"model_state": state}, "InceptionTime", strict=False)
    torch.testing.assert_close(ours.outlinear.weight, state["outlinear.weight"])


def test_wrong_name_is_explained():
    bc = bcm.LSTM(input_dim=13, num_classes=9, hidden_dims=8, num_layers=2)
    with pytest.raises(ValueError, match="does not look like the state dict of a BreizhCrops TempCNN"):
        load_breizhcrops_checkpoint({"model_state": bc.state_dict()}, "TempCNN")
