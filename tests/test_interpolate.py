"""Weight interpolation (``interp:ALPHA:BASE|FINETUNED``): its names, the mix against
hand-computed and independently built references, the exact ends, and the refusals.

Parents are tiny timm test networks (``test_efficientnet``: 99k parameters, with BatchNorm)
and a tiny open_clip configuration, saved with seeded random weights and random BatchNorm
statistics, so a mix that skipped any buffer would show in the outputs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from biobench.backbones import UnknownModel, WeightsMismatch, create_backbone, model_info
from biobench.backbones.interpolate import (
    InterpolatedModelInfo,
    StateDictSource,
    check_same_architecture,
    format_alpha,
    interpolation_name,
    iter_alphas,
    mix_in_place,
    parse_interpolation_name,
)

ROOT = Path(__file__).resolve().parents[1]
ARCH = "test_efficientnet"  # timm's test network: 160 px by its config, BatchNorm throughout


def write_timm_checkpoint(path: Path, seed: int, arch: str = ARCH, *, legacy: bool = False,
                          wrapped: bool = False) -> dict:
    """A full timm state dict (classifier included, as a real checkpoint has) with seeded
    weights and non-trivial BatchNorm statistics; returns it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = timm.create_model(arch).state_dict()
    generator = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=generator))
        elif key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
        elif key.endswith("num_batches_tracked"):
            value.fill_(100 * seed)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif wrapped:  # the layout of a training checkpoint: {"state_dict": {"module.<key>": ...}}
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return state


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parents")
    base, finetuned = folder / "base.safetensors", folder / "finetuned.pth"
    return {"base": f"timm:{ARCH}@{base}", "finetuned": f"timm:{ARCH}@{finetuned}",
            "base_state": write_timm_checkpoint(base, 1),
            "finetuned_state": write_timm_checkpoint(finetuned, 2), "folder": folder}


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def features(name: str, images: torch.Tensor) -> torch.Tensor:
    return create_backbone(name)(images)


def feature_extractor_state(state: dict) -> dict:
    """A full timm state dict without its classifier: what a ``num_classes=0`` net holds."""
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


# ---- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, text", [(0, "0"), (0.0, "0"), (-0.0, "0"), (1, "1"),
                                         (0.1, "0.1"), (0.25, "0.25"), (0.7, "0.7")])
def test_alpha_has_one_spelling(alpha, text):
    assert format_alpha(alpha) == text
    assert float(text) == alpha


def test_sweep_alphas_are_short_and_exact():
    alphas = list(iter_alphas(10))
    assert [format_alpha(a) for a in alphas] == ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6",
                                                 "0.7", "0.8", "0.9", "1"]


def test_name_round_trip(parents):
    name = interpolation_name(0.3, parents["base"], parents["finetuned"])
    assert name == f"interp:0.3:{parents['base']}|{parents['finetuned']}"
    assert parse_interpolation_name(name) == (0.3, parents["base"], parents["finetuned"])


@pytest.mark.parametrize("name, message", [
    ("interp:0.50:mobilenet_v2|mobilenet_v2", "write ALPHA as '0.5', not '0.50'"),
    ("interp:1.0:mobilenet_v2|mobilenet_v2", "write ALPHA as '1', not '1.0'"),
    ("interp:1.5:mobilenet_v2|mobilenet_v2", "must be a number in [0, 1]"),
    ("interp:half:mobilenet_v2|mobilenet_v2", "must be a number in [0, 1]"),
    ("interp:0.5:mobilenet_v2", "found 0"),
    ("interp:0.5:a|b|c", "found 2"),
    ("interp:0.5:|mobilenet_v2", "BASE is empty"),
    ("interp:0.5:mobilenet_v2|interp:0.5:a", "nesting is not supported"),
    ("interp:0.5", "interp:ALPHA:BASE|FINETUNED"),
])
def test_bad_names_say_what_is_wrong(name, message):
    with pytest.raises(UnknownModel) as err:
        model_info(name)
    assert message in str(err.value)


def test_unknown_parent_is_named():
    with pytest.raises(UnknownModel, match="mobilenet_v3"):
        model_info("interp:0.5:mobilenet_v2|mobilenet_v3")


def test_model_info_records_both_parents_and_alpha(parents):
    name = interpolation_name(0.4, parents["base"], parents["finetuned"])
    info = model_info(name)
    assert isinstance(info, InterpolatedModelInfo)
    assert (info.name, info.base, info.finetuned, info.alpha) == (
        name, parents["base"], parents["finetuned"], 0.4)
    assert info.loader == "interpolated" and info.imagenet_top1 is None
    assert info.resolution == model_info(parents["base"]).resolution == 160
    recorded = json.loads(json.dumps(info.provenance))["interpolation"]  # JSON-ready
    assert (recorded["base"], recorded["finetuned"], recorded["alpha"]) == (
        parents["base"], parents["finetuned"], 0.4)
    # the built model carries the same metadata
    assert create_backbone(name).info == info


def test_parents_of_different_resolutions_are_refused(parents):
    # random_tiny is test_efficientnet at 64 px; the file parent runs at timm's 160 px
    with pytest.raises(UnknownModel, match="64 px.*160 px"):
        model_info(f"interp:0.5:random_tiny|{parents['finetuned']}")


def test_naming_an_interpolated_model_imports_no_torch():
    code = ("import json, sys\n"
            "from biobench.backbones import model_info\n"
            "info = model_info('interp:0.5:mobilenet_v2|mobilenet_v2@/no/such/file.safetensors')\n"
            "print(json.dumps({'alpha': info.alpha, 'heavy': [m for m in ('torch', 'timm', "
            "'open_clip', 'safetensors') if m in sys.modules]}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"alpha": 0.5, "heavy": []}


# ---- the arithmetic, on known tensors ---------------------------------------------------------

def known_pair():
    base = {"conv.weight": torch.tensor([1.0, 2.0, -3.0, 0.5]),
            "bn.running_var": torch.tensor([1.0, 4.0]),
            "bn.num_batches_tracked": torch.tensor(3)}
    finetuned = {"conv.weight": torch.tensor([3.0, 0.0, 5.0, 0.25]),
                 "bn.running_var": torch.tensor([2.0, 2.0]),
                 "bn.num_batches_tracked": torch.tensor(7)}
    return base, finetuned


def test_half_of_two_known_tensors_is_their_mean():
    target, finetuned = known_pair()
    mix_in_place(target, StateDictSource(finetuned), 0.5)
    # hand-computed means; BatchNorm statistics are mixed like weights
    assert torch.equal(target["conv.weight"], torch.tensor([2.0, 1.0, 1.0, 0.375]))
    assert torch.equal(target["bn.running_var"], torch.tensor([1.5, 3.0]))
    assert int(target["bn.num_batches_tracked"]) == 7  # the fine-tuned model's batch count


def test_quarter_is_hand_computed():
    target, finetuned = known_pair()
    mix_in_place(target, StateDictSource(finetuned), 0.25)
    # 0.75 * [1, 2, -3, 0.5] + 0.25 * [3, 0, 5, 0.25]
    assert torch.equal(target["conv.weight"], torch.tensor([1.5, 1.5, -1.0, 0.4375]))


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.7])
def test_any_alpha_matches_a_float64_reference(alpha):
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, generator=generator), torch.randn(1000, generator=generator)
    target = {"w": a.clone()}
    mix_in_place(target, StateDictSource({"w": b}), alpha)
    reference = (1 - alpha) * a.double() + alpha * b.double()
    torch.testing.assert_close(target["w"].double(), reference, rtol=0, atol=1e-6)


def test_half_precision_weights_are_mixed_in_float32():
    target = {"w": torch.tensor([1.0, 2049.0], dtype=torch.float16)}
    mix_in_place(target, StateDictSource({"w": torch.tensor([2.0, 2051.0])}), 0.5)
    assert target["w"].dtype == torch.float16
    assert torch.equal(target["w"], torch.tensor([1.5, 2050.0], dtype=torch.float16))


def test_alpha_zero_keeps_the_base_batch_count():
    target, finetuned = known_pair()
    mix_in_place(target, StateDictSource(finetuned), 0.0)
    assert int(target["bn.num_batches_tracked"]) == 3
    assert torch.equal(target["conv.weight"], known_pair()[0]["conv.weight"])


def test_other_integer_tensors_must_be_equal():
    target = {"w": torch.ones(2), "attn.relative_position_index": torch.tensor([0, 1, 2])}
    source = {"w": torch.zeros(2), "attn.relative_position_index": torch.tensor([0, 2, 1])}
    with pytest.raises(WeightsMismatch, match="'attn.relative_position_index'"):
        mix_in_place(target, StateDictSource(source), 0.5, base_name="A", finetuned_name="B")


def test_mismatch_is_refused_before_any_tensor_changes():
    target = {"a.weight": torch.ones(2), "b.weight": torch.ones(3)}
    with pytest.raises(WeightsMismatch):
        mix_in_place(target, StateDictSource({"a.weight": torch.zeros(2),
                                              "b.weight": torch.zeros(4)}), 0.5)
    assert torch.equal(target["a.weight"], torch.ones(2))  # untouched


@pytest.mark.parametrize("base, finetuned, first", [
    ({"a": (2,), "b": (3,), "c": (1,)}, {"a": (2,), "b": (4,), "c": (5,)},
     "'b' has shape (3,) in BASE and (4,) in FINETUNED"),
    ({"a": (2,), "b": (3,)}, {"a": (2,), "x": (9,)}, "'b' (3,) is in BASE but not in FINETUNED"),
    ({"a": (2,)}, {"a": (2,), "extra": (1,)}, "'extra' (1,) is in FINETUNED but not in BASE"),
])
def test_first_differing_key_is_named(base, finetuned, first):
    with pytest.raises(WeightsMismatch) as err:
        check_same_architecture(base, finetuned, base_name="A", finetuned_name="B")
    assert first in str(err.value) and "'A'" in str(err.value) and "'B'" in str(err.value)


# ---- whole models ---------------------------------------------------------------------------

def test_alpha_zero_and_one_reproduce_each_parent_exactly(parents, images):
    base_out, finetuned_out = features(parents["base"], images), features(parents["finetuned"],
                                                                          images)
    assert not torch.allclose(base_out, finetuned_out)  # the parents really differ
    at_zero = features(interpolation_name(0, parents["base"], parents["finetuned"]), images)
    at_one = features(interpolation_name(1, parents["base"], parents["finetuned"]), images)
    assert torch.equal(at_zero, base_out)
    assert torch.equal(at_one, finetuned_out)


def test_half_equals_a_network_loaded_with_averaged_weights(parents, images):
    mixed = create_backbone(interpolation_name(0.5, parents["base"], parents["finetuned"]))
    # the reference: averaged by hand, loaded into a fresh timm network by timm itself
    a = feature_extractor_state(parents["base_state"])
    b = feature_extractor_state(parents["finetuned_state"])
    averaged = {k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else b[k] for k in a}
    reference = timm.create_model(ARCH, num_classes=0)
    reference.load_state_dict(averaged)
    mixed_state = mixed.net.state_dict()
    assert mixed_state.keys() == averaged.keys()
    for key, value in averaged.items():
        assert torch.equal(mixed_state[key], value), key
    with torch.no_grad():
        assert torch.equal(mixed(images), reference.eval()(images))
    # and it is really in between: neither parent
    assert not torch.equal(mixed(images), features(parents["base"], images))


def test_mismatched_architectures_name_the_first_differing_key(parents, tmp_path):
    other = tmp_path / "groupnorm.pth"
    other_state = write_timm_checkpoint(other, 3, "test_efficientnet_gn")
    # the first key, in the base network's order, that the other lacks or shapes differently
    base_state = feature_extractor_state(parents["base_state"])
    other_state = feature_extractor_state(other_state)
    expected = next(k for k, v in base_state.items()
                    if k not in other_state or other_state[k].shape != v.shape)
    with pytest.raises(WeightsMismatch) as err:
        create_backbone(f"interp:0.5:{parents['base']}|timm:test_efficientnet_gn@{other}")
    message = str(err.value)
    assert f"First differing key: '{expected}'" in message
    assert parents["base"] in message and str(other) in message


@pytest.mark.parametrize("layout", ["legacy", "wrapped"])
def test_other_checkpoint_layouts_are_read(parents, images, tmp_path, layout):
    """A pre-zip torch file (not memory-mappable: read whole) and a training checkpoint
    ``{'state_dict': {'module.<key>': ...}}`` give the same mix as the plain file."""
    path = tmp_path / f"{layout}.pth"
    write_timm_checkpoint(path, 2, legacy=layout == "legacy", wrapped=layout == "wrapped")
    ours = features(f"interp:0.5:{parents['base']}|timm:{ARCH}@{path}", images)
    plain = features(interpolation_name(0.5, parents["base"], parents["finetuned"]), images)
    assert torch.equal(ours, plain)


def test_a_parent_without_a_file_is_built_whole(parents, images):
    """``@random`` (like a hub name) has no file to stream: it is built, then mixed."""
    random_parent = f"timm:{ARCH}@random"
    at_one = features(f"interp:1:{parents['base']}|{random_parent}", images)
    assert torch.equal(at_one, features(random_parent, images))
    at_zero = features(f"interp:0:{random_parent}|{parents['finetuned']}", images)
    assert torch.equal(at_zero, features(random_parent, images))


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                            "patch_size": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                          "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip_parents(tmp_path_factory):
    """Two checkpoints of a tiny open_clip architecture (image and text towers, as a real
    CLIP checkpoint holds), with the preprocessing sidecar open_clip_config.json."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "biobench-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "biobench-tiny-clip.json")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    states = {}
    for seed, stem in ((1, "base"), (2, "finetuned")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model("biobench-tiny-clip")
        states[f"{stem}_state"] = model.state_dict()
        torch.save(model.state_dict(), folder / f"{stem}.pt")
    return {"base": f"open_clip:biobench-tiny-clip@{folder / 'base.pt'}",
            "finetuned": f"open_clip:biobench-tiny-clip@{folder / 'finetuned.pt'}", **states}


def test_open_clip_checkpoints_mix_their_image_towers(tiny_clip_parents):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    base, finetuned = tiny_clip_parents["base"], tiny_clip_parents["finetuned"]
    assert torch.equal(features(interpolation_name(0, base, finetuned), images),
                       features(base, images))
    assert torch.equal(features(interpolation_name(1, base, finetuned), images),
                       features(finetuned, images))
    mixed = create_backbone(interpolation_name(0.5, base, finetuned))
    a, b = tiny_clip_parents["base_state"], tiny_clip_parents["finetuned_state"]
    for key, value in mixed.net.state_dict().items():  # "model.<key>" = the file's "visual.<key>"
        file_key = "visual." + key.removeprefix("model.")
        assert torch.equal(value, (a[file_key] + b[file_key]) / 2), key


# ---- usable wherever a model name is ----------------------------------------------------------

def test_an_interpolated_model_runs_and_is_stored(parents, tmp_path):
    from biobench.evaluate import run_evaluation
    from biobench.grid import parse_grid
    from biobench.store import ResultsStore

    name = interpolation_name(0.5, parents["base"], parents["finetuned"])
    grid = parse_grid({"models": [name], "tasks": ["synthetic"]}, "test grid")
    assert grid.models == (name,)
    store = ResultsStore(tmp_path / "store.sqlite")
    result = run_evaluation(name, "synthetic", store=store, n_bootstrap=50)
    assert result.key.model == name and not result.reused
    models = store.models("own")
    assert name in set(models["model"])
    assert run_evaluation(name, "synthetic", store=store, n_bootstrap=50).reused


@pytest.mark.network
def test_offline_model_with_its_own_file_mixes_to_itself(images):
    """``mobilenet_v2@FILE`` is mobilenet_v2's form with FILE's weights: with its own converted
    weights as FILE, any mix is mobilenet_v2 exactly (0.5 a + 0.5 a = a)."""
    from biobench.backbones.offline import converted_weights

    same = f"mobilenet_v2@{converted_weights('mobilenet_v2')}"
    photos = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    mixed = create_backbone(interpolation_name(0.5, "mobilenet_v2", same))
    assert repr(mixed.transform) == repr(create_backbone("mobilenet_v2").transform)
    assert torch.equal(mixed(photos), create_backbone("mobilenet_v2")(photos))


def test_the_gpu_grid_names_a_sweep_between_two_parents():
    """configs/interpolation-gpu.toml resolves offline (names only, nothing is built): the
    base, the fine-tune, and mixes whose parents are exactly those two, for increasing α."""
    from biobench.grid import load_grid

    grid = load_grid(ROOT / "configs" / "interpolation-gpu.toml")
    base, finetuned, *mixes = grid.models
    infos = [model_info(name) for name in mixes]
    assert all((i.base, i.finetuned) == (base, finetuned) for i in infos)
    alphas = [i.alpha for i in infos]
    assert alphas == sorted(alphas) and alphas[-1] == 1.0 and len(set(alphas)) == len(alphas)
    assert grid.protocol is None  # each task's own BioBench probe


def test_the_ubench_gpu_grid_sweeps_two_pairs_zero_shot():
    """configs/interpolation-ubench-gpu.toml resolves offline: for each base, its mixes with one
    fine-tune at increasing α ending at 1, every μ-Bench task, and the zero_shot protocol."""
    from biobench.grid import load_grid
    from biobench.tasks import list_tasks
    from biobench.zeroshot.adapters import is_contrastive_name

    grid = load_grid(ROOT / "configs" / "interpolation-ubench-gpu.toml")
    assert grid.protocol == "zero_shot"
    assert sorted(grid.tasks) == [t for t in list_tasks() if t.startswith("ubench")]
    mixes = [model_info(m) for m in grid.models if m.startswith("interp:")]
    pairs = {(i.base, i.finetuned) for i in mixes}
    assert pairs == {("hf:openai/clip-vit-base-patch32", "hf:vinid/plip"),
                     ("open_clip:ViT-B-32/openai", "open_clip:hf-hub:wisdomik/QuiltNet-B-32")}
    for base, finetuned in pairs:
        assert base in grid.models and is_contrastive_name(base)
        alphas = [i.alpha for i in mixes if (i.base, i.finetuned) == (base, finetuned)]
        assert alphas == sorted(alphas) and alphas[-1] == 1.0 and len(alphas) == 10
