"""Every model of the cropkit registry: shapes, probabilities, gradients, batch size 1, sequence lengths,
hyperparameter checks, checkpoint round trips and input checks."""
import re

import numpy as np
import pytest
import torch

from cropkit.core import set_seed
from cropkit.models.registry import (MODELS, canonical_name, check_hparams, check_input, get_model, load_model,
                                     model_hparams, save_model)

D, C, T = 13, 5, 24
# small widths keep every test fast; the architecture (and its code paths) is the same as with the defaults
SMALL = dict(TempCNN=dict(hidden_dims=8), LSTM=dict(hidden_dims=8, num_layers=2),
             TransformerEncoder=dict(d_model=16, n_layers=2, d_inner=16),
             PETransformerModel=dict(d_model=16, n_layers=2, d_inner=16),
             MSResNet=dict(hidden_dims=4), InceptionTime=dict(hidden_dims=16, num_layers=3, kernel_size=8),
             StarRNN=dict(hidden_dims=8, num_layers=2), OmniScaleCNN=dict(parameter_budgets=[256, 1024]))
NAMES = list(MODELS)
# models whose BatchNorm sees a single value per feature for one series in training mode
NO_TRAIN_BATCH_OF_ONE = {"TempCNN"}


def small_model(name, seed=0, **kw):
    set_seed(seed)
    return get_model(name, kw.pop("input_dim", D), kw.pop("num_classes", C), kw.pop("sequencelength", T),
                     **(SMALL[name] | kw))


def test_registry_names():
    assert NAMES == ["TempCNN", "LSTM", "TransformerEncoder", "PETransformerModel", "MSResNet", "InceptionTime",
                     "StarRNN", "OmniScaleCNN"]
    for name in NAMES:
        assert canonical_name(name.upper()) == name and canonical_name(name.lower()) == name


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_probabilities(name):
    model = small_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(6, T, D))
    assert out.shape == (6, C) and out.dtype == torch.float32
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(6))
    assert (out <= 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_default_hyperparameters_build_and_run(name):
    set_seed(0)
    model = get_model(name, 13, 9, 45).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 45, 13)).shape == (2, 9)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = small_model(name).train()
    loss = torch.nn.functional.nll_loss(model(torch.randn(4, T, D)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert no_grad == []


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one(name):
    model = small_model(name)
    x = torch.randn(1, T, D)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, C)
    model.train()
    if name in NO_TRAIN_BATCH_OF_ONE:
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            model(x)
    else:
        assert model(x).shape == (1, C)


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_and_batch_independent(name):
    model = small_model(name).eval()
    x = torch.randn(5, T, D)
    with torch.no_grad():
        a, b, part = model(x), model(x), model(x[:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(part, a[:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "TempCNN"])
@pytest.mark.parametrize("length", [1, 7, 70])
def test_other_sequence_lengths(name, length):
    model = small_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, length, D)).shape == (2, C)


def test_tempcnn_needs_its_sequence_length():
    model = small_model("TempCNN", sequencelength=30).eval()
    assert model(torch.randn(2, 30, D)).shape == (2, C)
    with pytest.raises(ValueError, match="sequencelength=30"):
        model(torch.randn(2, 31, D))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_band_count_is_named(name):
    model = small_model(name).eval()
    with pytest.raises(ValueError, match=f"input_dim={D} bands but the input has 10"):
        model(torch.randn(2, T, 10))
    with pytest.raises(ValueError, match=r"\(batch, time, bands\)"):
        model(torch.randn(T, D))


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'ResNet'.*TempCNN, LSTM, TransformerEncoder"):
        get_model("ResNet", D, C, T)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyperparameter_lists_valid_ones(name):
    with pytest.raises(ValueError, match="unknown hyperparameter.*'bogus'.*valid hyperparameters") as e:
        get_model(name, D, C, T, bogus=1)
    for key in model_hparams(name):
        assert key in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_values_are_refused(name):
    defaults = model_hparams(name)
    for key, default in defaults.items():
        if "dropout" in key:
            bad = [1.0, -0.1, "0.5"]
        elif isinstance(default, bool):
            bad = ["yes", 1]
        elif isinstance(default, int):
            bad = [0, -3, 2.5, True]
        elif isinstance(default, (list, tuple)):
            bad = [[], [1, -1], "12"]
        else:
            continue
        for value in bad:
            with pytest.raises(ValueError, match=re.escape(f"{key}={value!r} is invalid")):
                check_hparams(name, {key: value})


@pytest.mark.parametrize("key,value", [("input_dim", 0), ("input_dim", -13), ("num_classes", 2.0), ("sequencelength", -1)])
def test_bad_data_arguments(key, value):
    args = dict(input_dim=D, num_classes=C, sequencelength=T) | {key: value}
    with pytest.raises(ValueError, match=f"{key} must be a positive integer, got {value!r}"):
        get_model("TempCNN", **args)


def test_model_specific_constraints():
    with pytest.raises(ValueError, match="divisible by n_head"):
        get_model("TransformerEncoder", D, C, T, d_model=10, n_head=4)
    with pytest.raises(ValueError, match="odd kernel_size"):
        get_model("TempCNN", D, C, T, kernel_size=4)
    with pytest.raises(ValueError, match="three stages"):
        get_model("MSResNet", D, C, T, layers=[1, 1, 1, 2])


def test_numpy_integers_are_accepted():
    model = get_model("LSTM", np.int64(D), np.int64(C), np.int64(T), hidden_dims=np.int64(8))
    assert model.cropkit_spec["input_dim"] == D and type(model.cropkit_spec["hparams"]["hidden_dims"]) is int


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    model = small_model(name, seed=3)
    # one training-mode pass so BatchNorm statistics differ from their initial values
    model.train()(torch.randn(4, T, D))
    model.eval()
    classes = [f"class{i}" for i in range(C)]
    norm = {"mean": np.linspace(0, 1, D), "std": np.ones(D)}
    path = save_model(tmp_path / "m.pt", model, **model.cropkit_spec, classes=classes, normalization=norm,
                      extra={"epoch": 3, "bands": [f"B{i}" for i in range(D)]})
    restored, meta = load_model(path, device="cpu")
    assert type(restored) is type(model) and not restored.training
    x = torch.randn(3, T, D)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    assert meta["name"] == name and meta["classes"] == classes and meta["extra"]["epoch"] == 3
    assert meta["normalization"]["mean"] == pytest.approx(list(np.linspace(0, 1, D)))
    assert meta["hparams"] == model.cropkit_spec["hparams"]
    assert (meta["input_dim"], meta["num_classes"], meta["sequencelength"]) == (D, C, T)


def test_checkpoint_is_self_describing_and_safe(tmp_path):
    model = small_model("TempCNN")
    save_model(tmp_path / "m.pt", model, "tempcnn", SMALL["TempCNN"], D, C, T)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)  # the safe loader suffices
    assert (ckpt["format"], ckpt["version"]) == ("cropkit-parcel-model", 1)
    assert ckpt["hparams"] == model_hparams("TempCNN") | SMALL["TempCNN"]  # defaults are stored too
    assert ckpt["name"] == "TempCNN"


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    model = small_model("LSTM")
    save_model(tmp_path / "best.pt", model, **model.cropkit_spec, extra={"epoch": 1})
    with pytest.raises(TypeError, match=r"extra\['bad'\]"):
        save_model(tmp_path / "best.pt", model, **model.cropkit_spec, extra={"bad": object()})
    _, meta = load_model(tmp_path / "best.pt")
    assert meta["extra"] == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_save_refuses_mismatched_architecture(tmp_path):
    model = small_model("LSTM")
    with pytest.raises(ValueError, match="do not fit LSTM.*shape mismatches"):
        save_model(tmp_path / "m.pt", model, "LSTM", {"hidden_dims": 16, "num_layers": 2}, D, C, T)
    with pytest.raises(ValueError, match="3 class names for num_classes=5"):
        save_model(tmp_path / "m.pt", model, **model.cropkit_spec, classes=["a", "b", "c"])
    assert not (tmp_path / "m.pt").exists()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "trunc.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="trunc.pt.*cannot be read"):
        load_model(tmp_path / "trunc.pt")
    torch.save({"model_state": {}}, tmp_path / "bc.pth")
    with pytest.raises(ValueError, match="load_breizhcrops_checkpoint"):
        load_model(tmp_path / "bc.pth")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a dict"):
        load_model(tmp_path / "list.pt")
    model = small_model("MSResNet")
    save_model(tmp_path / "ok.pt", model, **model.cropkit_spec)
    ckpt = torch.load(tmp_path / "ok.pt", weights_only=True)
    del ckpt["state_dict"]["classifier.bias"]
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="broken.pt.*missing keys: classifier.bias"):
        load_model(tmp_path / "broken.pt")
    ckpt = torch.load(tmp_path / "ok.pt", weights_only=True)
    ckpt["hparams"]["hidden_dims"] = -1
    torch.save(ckpt, tmp_path / "badhp.pt")
    with pytest.raises(ValueError, match="cannot rebuild the model of.*badhp.pt.*hidden_dims=-1"):
        load_model(tmp_path / "badhp.pt")


def test_check_input_wrong_width(tmp_path):
    model = small_model("TempCNN")
    save_model(tmp_path / "m.pt", model, **model.cropkit_spec)
    _, meta = load_model(tmp_path / "m.pt")
    x10 = np.zeros((4, T, 10), np.float32)  # e.g. 10-band L2A data into a 13-band model
    with pytest.raises(ValueError, match=r"input has 10 bands .* trained on 13 bands"):
        check_input(meta, x10)
    with pytest.raises(ValueError, match="m.pt"):
        check_input(meta, x10)
    with pytest.raises(ValueError, match=f"needs exactly sequencelength={T}"):
        check_input(meta, np.zeros((T + 1, D), np.float32))
    x = torch.zeros(2, T, D)
    assert check_input(meta, x) is x
    x[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        check_input(meta, x)


def test_check_input_any_length_for_recurrent_models():
    model = small_model("StarRNN")
    assert check_input(model, torch.zeros(3, 100, D)).shape == (3, 100, D)
