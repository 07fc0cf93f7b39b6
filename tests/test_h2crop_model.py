"""Integration and bad-input tests for the H2Crop model (cropkit.models.h2crop, h2crop_swin, h2crop_enmap)."""
import pytest
import torch

from cropkit.models.h2crop import (CONFIGS, LEVELS, H2CropConfig, H2CropModel, build_model, cascade_loss, check_batch,
                                   get_config, load_h2crop, save_h2crop, unused_parameters)
from cropkit.models.h2crop_swin import (BackboneLoadReport, SwinEncoder3D, attention_backend, load_s2_backbone,
                                        map_agrifm_key)

# small variants of the tiny configuration keep every test well under a second
S2_ONLY = dict(with_hyper=False, with_priors=False)


def s2_batch(b=1, t=6, size=32, **extra):
    torch.manual_seed(0)
    return {"S2": torch.randn(b, t, 10, size, size), **extra}


def tiny_batch(b=1):
    torch.manual_seed(0)
    return {"S2": torch.randn(b, 6, 10, 96, 96), "EnMAP": torch.randn(b, 218, 32, 32),
            "priors": torch.randint(0, 7, (b, 4, 96, 96))}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny").eval()


# --- configurations -------------------------------------------------------------------------------------------

def test_published_names_present():
    for season in ("jun", "Aug", "Oct", "Dec"):
        for tag in ("", "_H", "_P", "_H_P"):
            assert f"crops_S2{tag}_{season}" in CONFIGS
    for k in range(1, 5):
        assert f"level{k}_crops_S2_jun" in CONFIGS
    assert "tiny" in CONFIGS


def test_unknown_config_lists_names():
    with pytest.raises(KeyError) as e:
        build_model("crops_S2_H_P_nov")
    msg = str(e.value)
    assert "crops_S2_H_P_nov" in msg and "crops_S2_H_P_jun" in msg and "tiny" in msg


def test_config_name_must_be_string():
    with pytest.raises(TypeError, match="must be a string"):
        get_config(3)


def test_unknown_override_lists_valid_keys():
    with pytest.raises(TypeError) as e:
        build_model("tiny", hyper=True)
    assert "['hyper']" in str(e.value) and "with_hyper" in str(e.value)


@pytest.mark.parametrize("override, fragment", [
    (dict(num_frames=0), "num_frames must be >= 1"),
    (dict(depths=(1, 1, 1)), "need 4 stages"),
    (dict(num_heads=(3, 2, 2, 4)), "not divisible by num_heads 3"),
    (dict(downsample_steps=((2, 2, 2),)), "needs 3 steps"),
    (dict(neck_dim=100), "divisible by 8"),
    (dict(levels=("level1", "level1")), "distinct"),
    (dict(num_classes=(7, 37, 83, 1)), ">= 2"),
    (dict(img_size=100), "multiple of enmap_size 32"),
    (dict(rel_pos="nearest"), "rel_pos must be one of"),
])
def test_invalid_overrides(override, fragment):
    with pytest.raises(ValueError, match="invalid H2Crop configuration") as e:
        build_model("tiny", **override)
    assert fragment in str(e.value)


def test_override_keys_published():
    assert get_config("crops_S2_jun", with_hyper=True, with_priors=True) == get_config("crops_S2_H_P_jun")
    assert get_config("level2_crops_S2_jun").with_priors and get_config("level2_crops_S2_jun").with_hyper


def test_per_config_heads():
    with torch.device("meta"):
        full = build_model("crops_S2_H_P_jun")
        single = build_model("level4_crops_S2_jun")
        plain = build_model("crops_S2_Oct")
    assert [h[0].in_channels for h in full.heads.heads.values()] == [263, 300, 376, 441]
    assert list(single.heads.heads) == ["level4"] and single.heads.heads["level4"][0].in_channels == 256 + 102
    assert [h[0].in_channels for h in plain.heads.heads.values()] == [128, 135, 165, 211]
    assert plain.enmap is None and plain.config.num_frames == 10


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, exc, fragment", [
    (lambda b: b.pop("S2"), KeyError, "missing key 'S2'"),
    (lambda b: b.pop("EnMAP"), KeyError, "missing key 'EnMAP'"),
    (lambda b: b.pop("priors"), KeyError, "missing key 'priors'"),
    (lambda b: b.update(S2=torch.randn(1, 6, 10, 96)), ValueError, "(B, 6, 10, H, W)"),
    (lambda b: b.update(S2=torch.randn(1, 8, 10, 96, 96)), ValueError, "got (1, 8, 10, 96, 96)"),
    (lambda b: b.update(S2=torch.randn(1, 6, 13, 96, 96)), ValueError, "(B, 6, 10, H, W)"),
    (lambda b: b.update(S2=torch.randn(1, 6, 10, 192, 192)), ValueError, "must be 96×96"),
    (lambda b: b.update(S2=b["S2"].numpy()), TypeError, "must be a torch.Tensor"),
    (lambda b: b["S2"].__setitem__((0, 0, 0, 0, 0), float("inf")), ValueError, "1 NaN/inf value(s)"),
    (lambda b: b.update(EnMAP=torch.randn(1, 218, 64, 64)), ValueError, "(1, 218, 32, 32), got (1, 218, 64, 64)"),
    (lambda b: b.update(EnMAP=torch.randn(2, 218, 32, 32)), ValueError, "got (2, 218, 32, 32)"),
    (lambda b: b["EnMAP"].__setitem__((0, 0, 0, 0), float("nan")), ValueError, "batch['EnMAP'] contains 1 NaN"),
    (lambda b: b.update(priors=torch.zeros(1, 3, 96, 96, dtype=torch.long)), ValueError, "one map per level"),
    (lambda b: b.update(priors=torch.zeros(1, 4, 96, 96)), TypeError, "integer class ids"),
    (lambda b: b["priors"][:, 3].fill_(102), ValueError, "level4 holds value 102, outside 0..101"),
    (lambda b: b["priors"][:, 1].fill_(-3), ValueError, "level2 holds value -3"),
])
def test_bad_batches(mutate, exc, fragment):
    batch = tiny_batch()
    mutate(batch)
    with pytest.raises(exc) as e:
        check_batch(batch, get_config("tiny"))
    assert fragment in str(e.value)


def test_bad_batch_raises_from_model(tiny):
    batch = tiny_batch()
    batch["priors"][:, 0] = 9
    with pytest.raises(ValueError, match="level1 holds value 9"):
        tiny(batch)
    with pytest.raises(TypeError, match="dict batch"):
        tiny(batch["S2"])


def test_priors_only_checked_for_predicted_levels():
    batch = tiny_batch()
    batch["priors"][:, 3] = 500                       # level4 out of range, but only level1 is predicted
    s2, enmap, priors = check_batch(batch, get_config("tiny", levels=("level1",)))
    assert priors.dtype == torch.long


def test_extra_keys_ignored_and_int_priors_cast():
    batch = tiny_batch()
    batch["priors"] = batch["priors"].to(torch.int32)
    batch["label"], batch["name"] = torch.zeros(1, 4, 96, 96), "tile_0"
    _, _, priors = check_batch(batch, get_config("tiny"))
    assert priors.dtype == torch.long


# --- model behaviour -------------------------------------------------------------------------------------------

def test_tiny_outputs_and_all_parameters_used():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    assert unused_parameters(model, tiny_batch()) == []


def test_single_level_model_and_any_tile_size():
    model = build_model("tiny", levels=("level3",), **S2_ONLY).eval()
    out = model(s2_batch(size=40))
    assert list(out) == ["level3"] and out["level3"].shape == (1, 83, 40, 40)


@pytest.mark.parametrize("frames, steps", [(8, ((2, 2, 2), (2, 2, 2), (1, 2, 2))), (10, ((2, 2, 2),) * 3), (12, ((2, 2, 2),) * 3)])
def test_seasons_run(frames, steps):
    model = build_model("tiny", num_frames=frames, downsample_steps=steps, **S2_ONLY).eval()
    with torch.no_grad():
        out = model(s2_batch(t=frames))
    assert out["level4"].shape == (1, 102, 32, 32)


def test_time_not_collapsed_gets_projection():
    model = build_model("tiny", num_frames=12, **S2_ONLY).eval()      # steps 2, 2, 1 leave 2 frames at the end
    assert isinstance(model.neck.in_conv, torch.nn.Conv2d)
    with torch.no_grad():
        assert model(s2_batch(t=12))["level1"].shape == (1, 7, 32, 32)


def test_sdpa_matches_plain_attention():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    batch = tiny_batch()
    with torch.no_grad():
        fused = model(batch)["level4"]
        with attention_backend("math"):
            plain = model(batch)["level4"]
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)


def test_published_rel_pos_mode_differs_only_by_index():
    torch.manual_seed(0)
    exact = build_model("tiny", **S2_ONLY).eval()
    with torch.no_grad():
        for name, p in exact.named_parameters():
            if name.endswith("relative_position_bias_table"): p.normal_(0, 2)      # make the bias matter
    published = build_model("tiny", rel_pos="published", **S2_ONLY).eval()
    published.load_state_dict(exact.state_dict())                    # same weights, same parameter shapes
    x = s2_batch(size=96)["S2"]                                      # deepest grid 3×3: window clipped in h, w
    with torch.no_grad():
        e, p = exact.s2(x), published.s2(x)
    torch.testing.assert_close(e[2], p[2])                           # stages 1-2 clip only time: identical
    assert (e[-1] - p[-1]).abs().max() > 1e-2                        # stage 4 clips h, w: different pairing


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = build_model("tiny", drop_path=0.0, **S2_ONLY).train()
    b = build_model("tiny", drop_path=0.0, grad_checkpointing=True, **S2_ONLY).train()
    b.load_state_dict(a.state_dict())
    batch = s2_batch(size=32)
    batch["S2"].requires_grad_(True)
    for m in (a, b):
        sum(o.mean() for o in m(batch).values()).backward()
    ga = a.s2.layers[0].blocks[0].attn.qkv.weight.grad
    torch.testing.assert_close(ga, b.s2.layers[0].blocks[0].attn.qkv.weight.grad, atol=1e-5, rtol=1e-4)


# --- loss -------------------------------------------------------------------------------------------------------

def test_cascade_loss_bad_labels():
    logits = {lvl: torch.zeros(1, n, 4, 4) for lvl, n in zip(LEVELS, (7, 37, 83, 102))}
    labels = {lvl: torch.zeros(1, 4, 4, dtype=torch.long) for lvl in LEVELS}
    with pytest.raises(TypeError, match="integer class ids"):
        cascade_loss(logits, {**labels, "level3": torch.zeros(1, 4, 4)})
    with pytest.raises(ValueError) as e:
        cascade_loss(logits, {**labels, "level4": torch.full((1, 4, 4), 255)}, ignore_index=-1)
    assert "level4 hold value 255, outside 0..101 (102 classes) and not the ignore_index -1" in str(e.value)
    with pytest.raises(ValueError, match="at least one level"):
        cascade_loss(logits, labels, levels=[])
    loss = cascade_loss(logits, {**labels, "level4": torch.full((1, 4, 4), 255)}, ignore_index=255)
    assert torch.isfinite(loss)


# --- checkpoints ------------------------------------------------------------------------------------------------

def test_checkpoint_roundtrip(tmp_path, tiny):
    path = save_h2crop(tiny, tmp_path / "ckpt" / "tiny.pt", epoch=7, note="test")
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.pt"]          # no temporary file left
    loaded = load_h2crop(path).eval()
    assert loaded.config == tiny.config and loaded.config_name == "tiny"
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["level2"], tiny(batch)["level2"])
    assert torch.load(path, weights_only=True)["extra"] == {"epoch": 7, "note": "test"}


def test_checkpoint_from_another_configuration(tmp_path):
    model = build_model("tiny", levels=("level1", "level2"), **S2_ONLY)
    path = save_h2crop(model, tmp_path / "a.pt")
    other = build_model("tiny", **S2_ONLY)
    with pytest.raises(ValueError) as e:
        load_h2crop(path, other)
    msg = str(e.value)
    assert "saved from configuration 'tiny'" in msg and "levels: checkpoint ('level1', 'level2') vs model" in msg
    assert load_h2crop(path, build_model("tiny", levels=("level1", "level2"), **S2_ONLY)).config == model.config


def test_checkpoint_with_tampered_weights(tmp_path):
    model = build_model("tiny", **S2_ONLY)
    path = save_h2crop(model, tmp_path / "a.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["heads.heads.level1.2.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="does not fit configuration 'tiny'"):
        load_h2crop(path)


def test_checkpoint_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="H2Crop checkpoint not found"):
        load_h2crop(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="is not a PyTorch file"):
        load_h2crop(tmp_path / "corrupt.pt")
    good = save_h2crop(build_model("tiny", **S2_ONLY), tmp_path / "good.pt")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.pt .*corrupt"):
        load_h2crop(tmp_path / "truncated.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "raw.pt")
    with pytest.raises(ValueError, match="not a cropkit H2Crop checkpoint"):
        load_h2crop(tmp_path / "raw.pt")
    with pytest.raises(TypeError, match="expects an H2CropModel"):
        save_h2crop(torch.nn.Linear(2, 2), tmp_path / "x.pt")


# --- pretrained backbone loading --------------------------------------------------------------------------------

def agrifm_state_dict(encoder: SwinEncoder3D) -> dict:
    "The encoder's weights under AgriFM's published key names (as in AgriFM.pth), plus the extras it holds."
    sd = {}
    for k, v in encoder.state_dict().items():
        key = "S2_patch_emd." + k[len("patch_embed."):] if k.startswith("patch_embed.") else "backbone." + k
        sd["module." + key] = v.clone()
    sd["module.HLSL30_patch_emd.proj.weight"] = torch.zeros(encoder.embed_dim, 6, 2, 4, 4)
    sd["module.Modis_patch_emd.proj.weight"] = torch.zeros(encoder.embed_dim, 7, 2, 4, 4)
    for i, layer in enumerate(encoder.layers):
        for j, _ in enumerate(layer.blocks):
            sd[f"module.backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = torch.zeros(392, 392, dtype=torch.long)
    return {"meta": {"epoch": 100}, "state_dict": sd}


class Opaque:
    "A pickled object that weights_only loading refuses (as mmengine checkpoints may hold)."


def tiny_encoder(seed):
    torch.manual_seed(seed)
    return SwinEncoder3D(10, 16, (1, 1, 1, 1), (1, 2, 2, 4))


def test_backbone_report_with_mismatch(tmp_path):
    source = tiny_encoder(0)
    ckpt = agrifm_state_dict(source)
    ckpt["state_dict"]["module.backbone.layers.3.blocks.0.mlp.fc1.weight"] = torch.zeros(64, 128)   # wrong hidden width
    del ckpt["state_dict"]["module.backbone.norm.bias"]
    torch.save(ckpt, tmp_path / "AgriFM.pth")
    model = build_model("tiny", **S2_ONLY)
    report = load_s2_backbone(model, tmp_path / "AgriFM.pth")
    assert isinstance(report, BackboneLoadReport)
    assert report.mismatched == [("layers.3.blocks.0.mlp.fc1.weight", (64, 128), (512, 128))]
    assert report.missing == ["norm.bias"]                             # mismatched tensors are listed once, as mismatched
    assert sorted(k for k, _ in report.unexpected) == ["module.HLSL30_patch_emd.proj.weight", "module.Modis_patch_emd.proj.weight"]
    assert len(report.ignored) == 4
    assert len(report.loaded) == len(source.state_dict()) - 2
    assert torch.equal(model.s2.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert not torch.equal(model.s2.layers[3].blocks[0].mlp.fc1.weight, torch.zeros(512, 128))
    text = repr(report)
    assert "1 mismatched" in text and "checkpoint (64, 128) vs model (512, 128)" in text and "norm.bias" in text


def test_backbone_strict_loads_nothing_on_failure():
    source, target = tiny_encoder(0), tiny_encoder(1)
    ckpt = agrifm_state_dict(source)
    ckpt["state_dict"]["module.backbone.layers.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(10, 1)
    before = target.patch_embed.proj.weight.clone()
    with pytest.raises(ValueError, match="strict loading of the S2 backbone failed; nothing was loaded"):
        load_s2_backbone(target, ckpt, strict=True)
    assert torch.equal(target.patch_embed.proj.weight, before)


def test_backbone_complete_load_and_same_features():
    source, target = tiny_encoder(0).eval(), tiny_encoder(1).eval()
    sd = {k: v for k, v in agrifm_state_dict(source)["state_dict"].items() if "HLSL30" not in k and "Modis" not in k}
    report = load_s2_backbone(target, sd, strict=True)
    assert report.complete and not report.missing
    x = torch.randn(1, 6, 10, 32, 32)
    with torch.no_grad():
        for a, b in zip(source(x), target(x)):
            torch.testing.assert_close(a, b)


def test_backbone_from_h2crop_style_checkpoint():
    source = tiny_encoder(0)
    sd = {}
    for k, v in source.state_dict().items():
        prefix = "encoders.encoders.S2.patch_emd." + k[len("patch_embed."):] if k.startswith("patch_embed.") else "encoders.encoders.S2.backbone." + k
        sd[prefix] = v
    sd["neck.fusion_list.0.0.weight"] = torch.zeros(1)
    sd["encoders.encoders.EnMAP.s_vit.pos_embed"] = torch.zeros(1)
    sd["heads.heads_dict.level1.head.0.weight"] = torch.zeros(1)
    report = load_s2_backbone(tiny_encoder(1), sd)
    assert not report.missing and not report.mismatched
    assert {r for _, r in report.unexpected} == {"not part of the S2 stream"}


def test_backbone_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="AgriFM/H2Crop checkpoint not found"):
        load_s2_backbone(tiny_encoder(0), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00\x01junk")
    with pytest.raises(ValueError, match="is not a PyTorch file"):
        load_s2_backbone(tiny_encoder(0), tmp_path / "junk.pth")
    torch.save({"state_dict": {}, "cfg": Opaque()}, tmp_path / "objects.pth")
    with pytest.raises(ValueError, match="holds objects other than tensors"):
        load_s2_backbone(tiny_encoder(0), tmp_path / "objects.pth")
    with pytest.raises(TypeError, match="expected a state dict"):
        load_s2_backbone(tiny_encoder(0), [1, 2, 3])
    with pytest.raises(TypeError, match="got Linear"):
        load_s2_backbone(torch.nn.Linear(1, 1), {})


def test_map_agrifm_key_cases():
    assert map_agrifm_key("module.module.backbone.norm.weight") == ("norm.weight", "ok")
    assert map_agrifm_key("s2.layers.0.blocks.0.norm1.weight") == ("layers.0.blocks.0.norm1.weight", "ok")
    assert map_agrifm_key("backbone.layers.0.blocks.1.attn_mask") == (None, "derived buffer (recomputed)")
    assert map_agrifm_key("Modis_patch_emd.proj.bias") == (None, "patch embedding of another source")
