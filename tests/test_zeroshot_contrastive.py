"""Zero-shot contrastive scoring: the metric, the scoring maths, the text cache, templates and
the model adapters (tiny open_clip and transformers models built offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from biobench import metrics
from biobench.stats import bootstrap_replicates
from biobench.zeroshot.adapters import ContrastiveModel, cached_text_embeddings
from biobench.zeroshot.base import MISSING, MultipleChoice, QuestionSet
from biobench.zeroshot.contrastive import answer_contrastive

TINY_OPENCLIP = {"embed_dim": 8,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 8,
                                "head_width": 8},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16,
                              "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def tiny_openclip_name(tmp_path_factory) -> str:
    """``open_clip:tiny-zs-test@random``: a 1-layer ViT and text tower, registered offline."""
    import open_clip

    path = tmp_path_factory.mktemp("openclip_cfg") / "tiny-zs-test.json"
    path.write_text(json.dumps(TINY_OPENCLIP))
    open_clip.add_model_config(path)
    return "open_clip:tiny-zs-test@random"


# ---- question_accuracy -----------------------------------------------------------------------
def brute_question_accuracy(y_true, y_pred) -> float:
    asked = right = 0
    for t_row, p_row in zip(np.atleast_2d(y_true.T).T, np.atleast_2d(y_pred.T).T):
        for t, p in zip(np.atleast_1d(t_row), np.atleast_1d(p_row)):
            if t != MISSING:
                asked += 1
                right += int(p == t)
    return right / asked if asked else float("nan")


def random_answers(rng, n, slots):
    y_true = rng.integers(-1, 4, (n, slots))
    y_pred = np.where(rng.random((n, slots)) < 0.5, y_true, rng.integers(-1, 4, (n, slots)))
    return y_true, y_pred


def test_question_accuracy_equals_a_brute_force_count():
    rng = np.random.default_rng(0)
    for _ in range(30):
        y_true, y_pred = random_answers(rng, int(rng.integers(1, 40)), int(rng.integers(1, 6)))
        expected = brute_question_accuracy(y_true, y_pred)
        got = metrics.question_accuracy(y_true, y_pred)
        assert got == pytest.approx(expected, nan_ok=True)


def test_question_accuracy_hand_example_and_missing_answers_count_wrong():
    y_true = np.array([[0, -1], [1, 2], [-1, -1]])
    y_pred = np.array([[0, 3], [-1, 2], [1, 1]])  # (0,0) right, (1,0) unanswered, (1,1) right
    assert metrics.question_accuracy(y_true, y_pred) == 2 / 3
    assert np.isnan(metrics.question_accuracy(np.full((2, 2), -1), np.zeros((2, 2), int)))


def test_question_accuracy_of_one_label_per_example_is_plain_accuracy():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 5, 50)
    y_pred = np.where(rng.random(50) < 0.6, y_true, rng.integers(0, 5, 50))
    assert metrics.question_accuracy(y_true, y_pred) == metrics.accuracy(y_true, y_pred)
    from sklearn.metrics import accuracy_score
    assert metrics.question_accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))


def test_question_accuracy_bootstrap_counts_equal_the_loop_and_resample_plainly():
    rng = np.random.default_rng(2)
    assert metrics.bootstrap_strata("question_accuracy", np.zeros((4, 2))) is None
    for case in range(10):
        y_true, y_pred = random_answers(rng, int(rng.integers(1, 80)), 3)
        preds = [y_pred, y_true, np.full_like(y_true, -1)]
        loop = bootstrap_replicates("question_accuracy", y_true, preds, n_bootstrap=40,
                                    seed=case, method="loop")
        counted = bootstrap_replicates("question_accuracy", y_true, preds, n_bootstrap=40,
                                       seed=case, method="counts")
        assert np.array_equal(counted, loop, equal_nan=True)


# ---- scoring maths --------------------------------------------------------------------------
def question(example, options, answer, captions=None, slot=0):
    captions = captions or tuple((o,) for o in options)
    return MultipleChoice(example, slot, "test", "?", tuple(options), answer, captions)


class TableEmbedder:
    """Text embeddings looked up in a fixed table, counting what it is asked to embed."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.asked: list[list[str]] = []

    def __call__(self, texts):
        self.asked.append(list(texts))
        return np.stack([self.table[t] for t in texts])


def test_hand_made_2d_example():
    """Image at 0 deg; options at 0, 90, 180 deg: cosines 1, 0, -1; scale 2."""
    table = {"east": np.array([3.0, 0.0]), "north": np.array([0.0, 5.0]),
             "west": np.array([-1.0, 0.0])}
    qs = QuestionSet((question(0, ["north", "east", "west"], 0),), 1, 1, ("s",))
    answers = answer_contrastive(qs, np.array([[2.0, 0.0]]), TableEmbedder(table), scale=2.0)
    assert answers.chosen.tolist() == [1]
    z = np.exp([0.0, 2.0, -2.0])
    assert answers.extra["mean_confidence"] == pytest.approx(z[1] / z.sum())
    assert answers.extra["mean_gold_probability"] == pytest.approx(z[0] / z.sum())


def test_caption_sets_average_normalised_embeddings():
    # option A's captions at 0 and 90 deg (lengths 10 and 1) average to 45 deg once normalised
    # (unnormalised they would point near 0 deg); option B is at 30 deg; the image at 45 deg
    table = {"a0": np.array([10.0, 0.0]), "a90": np.array([0.0, 1.0]),
             "b30": np.array([np.sqrt(3), 1.0])}
    qs = QuestionSet((question(0, ["A", "B"], 0, (("a0", "a90"), ("b30",))),), 1, 1, ("x",))
    answers = answer_contrastive(qs, np.array([[1.0, 1.0]]), TableEmbedder(table), scale=1.0)
    assert answers.chosen.tolist() == [0]
    z = np.exp([1.0, np.cos(np.pi / 12)])
    assert answers.extra["mean_confidence"] == pytest.approx(z[0] / z.sum())


def test_ties_go_to_the_lowest_index():
    # (3, 4) and (6, 8) normalise to exactly the same vector: every score ties
    table = {"p": np.array([3.0, 4.0]), "q": np.array([6.0, 8.0])}
    qs = QuestionSet((question(0, ["p", "q"], 1), question(0, ["q", "p"], 1, slot=1)), 1, 2,
                     ("x", "y"))
    answers = answer_contrastive(qs, np.array([[1.0, 0.5]]), TableEmbedder(table), scale=1.0)
    assert answers.chosen.tolist() == [0, 0]
    assert answers.extra["mean_confidence"] == pytest.approx(0.5)


def test_vectorised_scores_equal_a_brute_force_loop(monkeypatch):
    from biobench.zeroshot import contrastive

    monkeypatch.setattr(contrastive, "BLOCK_ELEMENTS", 7)  # many image blocks
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(12)]
    table = {w: rng.normal(size=5) for w in words}
    n_images = 9
    items = []
    for ex in range(n_images):
        for slot in range(3):
            k = int(rng.integers(2, 6))
            options = list(rng.choice(words, size=k, replace=False))
            captions = tuple(tuple(rng.choice(words, size=int(rng.integers(1, 3)),
                                              replace=False)) for _ in options)
            items.append(question(ex, options, int(rng.integers(0, k)), captions, slot))
    qs = QuestionSet(tuple(items), n_images, 3, ("a", "b", "c"))
    images = rng.normal(size=(n_images, 5))
    embedder = TableEmbedder(table)
    answers = answer_contrastive(qs, images, embedder, scale=3.5)
    assert len(embedder.asked) == 1 and len(embedder.asked[0]) == len(set(embedder.asked[0]))

    chosen, conf, gold = [], [], []
    for q in items:
        image = images[q.example_index] / np.linalg.norm(images[q.example_index])
        scores = []
        for caps in q.captions:
            mean = np.mean([table[c] / np.linalg.norm(table[c]) for c in caps], axis=0)
            scores.append(3.5 * image @ (mean / np.linalg.norm(mean)))
        probs = np.exp(scores) / np.sum(np.exp(scores))
        best = int(np.argmax(scores))
        chosen.append(best)
        conf.append(probs[best])
        gold.append(probs[q.answer_idx])
    assert answers.chosen.tolist() == chosen
    assert answers.extra["mean_confidence"] == pytest.approx(np.mean(conf))
    assert answers.extra["mean_gold_probability"] == pytest.approx(np.mean(gold))


def test_a_zero_embedding_is_refused():
    qs = QuestionSet((question(0, ["a", "b"], 0),), 1, 1, ("s",))
    with pytest.raises(ValueError, match="zero or not finite"):
        answer_contrastive(qs, np.zeros((1, 2)),
                           TableEmbedder({"a": np.ones(2), "b": -np.ones(2)}), 1.0)


# ---- text cache ------------------------------------------------------------------------------
class HashTextModel(ContrastiveModel):
    """Deterministic text embeddings from the text's bytes; counts encoder calls."""

    def __init__(self, name="hash-text-model", identity="v1"):
        self.name, self.text_identity, self.similarity_scale = name, identity, 1.0
        self.calls: list[list[str]] = []

    def image_backbone(self):
        raise NotImplementedError("text-only test model")

    def encode_texts(self, texts):
        self.calls.append(list(texts))
        return np.array([[len(t), sum(t.encode()) % 97, 1.0] for t in texts], np.float32)


def test_text_embeddings_are_cached_per_model_and_identity():
    model = HashTextModel()
    texts = ["a photo of a red.", "a photo of a blue.", "a photo of a red."]
    first, hits = cached_text_embeddings(model, texts)
    assert hits == 0 and len(model.calls) == 1 and len(model.calls[0]) == 2  # distinct only
    assert np.array_equal(first, model.encode_texts(texts))
    model.calls.clear()
    again, hits = cached_text_embeddings(HashTextModel(), texts)
    assert hits == 2 and np.array_equal(again, first)
    fresh = HashTextModel()
    cached_text_embeddings(fresh, texts + ["new"])
    assert fresh.calls == [["new"]]  # only the new text is encoded
    changed = HashTextModel(identity="v2")  # other weights: nothing reused
    cached_text_embeddings(changed, texts)
    assert len(changed.calls) == 1


# ---- templates and the default questions ------------------------------------------------------
def test_default_questions_of_a_class_name_task():
    from biobench.tasks import get_task

    task = get_task("synthetic")
    data = task.load()
    qs = task.zero_shot_questions(data)
    assert qs.n_examples == len(data.test) and qs.n_slots == 1
    assert qs.y_true()[:, 0].tolist() == task.labels_array(data.test).tolist()
    q = qs.questions[0]
    assert q.options == ("red", "green", "blue")
    assert q.captions[0][0] == "a photo of a red."  # CLIP's first ImageNet template


def test_zero_shot_is_offered_only_to_single_label_tasks_with_class_names():
    from biobench.tasks import get_task, list_tasks

    with_zero_shot = {n for n in list_tasks() if "zero_shot" in get_task(n).protocols
                      and not n.startswith("ubench")}
    assert {"synthetic", "iwildcam", "plankton_flowcam", "inat21"} <= with_zero_shot
    assert not {"newt", "fishnet", "beluga", "fungiclef", "herbarium19"} & with_zero_shot


def test_templates_follow_the_modality_and_clean_class_names():
    from biobench.zeroshot.templates import GENERIC, caption_name, templates_for

    assert "a camera-trap photo of a {c}." in templates_for("camera-trap photos")
    assert "a microscope image of {c}." in templates_for("flow-imaging microscopy (FlowCam)")
    assert templates_for("generated images") == GENERIC
    assert caption_name("00001_Animalia_Arthropoda_Insecta_Diptera_Culicidae_Aedes_aegypti") \
        == "Aedes aegypti"
    assert caption_name("Insecta|Coleoptera|Carabidae|Carabus|Carabus nemoralis") \
        == "Carabus nemoralis"
    assert caption_name("tench, Tinca tinca") == "tench"


# ---- adapters --------------------------------------------------------------------------------
def test_openclip_adapter_image_features_match_the_backbone_scheme(tiny_openclip_name):
    from biobench.backbones import create_backbone
    from biobench.zeroshot.adapters import create_contrastive_model

    model = create_contrastive_model(tiny_openclip_name)
    backbone = create_backbone(tiny_openclip_name)
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.image_backbone()(images), backbone(images))
    assert model.image_backbone().preprocessing_id == backbone.preprocessing_id
    assert model.similarity_scale == 1.0  # OpenCLIP scores by the raw cosine
    text = model.encode_texts(["a photo of a red.", "a photo of a blue."])
    assert text.shape == (2, 8) and text.dtype == np.float32
    tokens = model.tokenizer(["a photo of a red."])
    with torch.no_grad():
        expected = model.model.encode_text(tokens).numpy()
    assert np.allclose(text[:1], expected, atol=1e-6)


def write_tiny_tokenizer(folder):
    """A word-level fast tokenizer over a dozen words, written offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "a", "photo", "of", "red", "green", "blue", ".",
             "microscope", "image"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>",
                                                       special_tokens=[("<eos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")
    fast.save_pretrained(folder)


def save_tiny_hf(folder, kind: str):
    import transformers

    transformers.logging.set_verbosity_error()
    text = dict(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, pad_token_id=0,
                eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    if kind == "clip":
        config = transformers.CLIPConfig(
            text_config=text, projection_dim=8,
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, image_size=32, patch_size=8))
        model = transformers.CLIPModel(config)
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                    crop_size={"height": 32, "width": 32})
    else:
        config = transformers.AlignConfig(
            text_config=text, projection_dim=32,
            # initializer_range 0.5: the default leaves a 1-block random EfficientNet's
            # pooled output near 1e-30, whose normalisation overflows
            vision_config=dict(image_size=32, hidden_dim=32, width_coefficient=0.1,
                               depth_coefficient=0.1, initializer_range=0.5))
        model = transformers.AlignModel(config)
        processor = transformers.EfficientNetImageProcessor(
            size={"height": 32, "width": 32}, do_center_crop=False)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    return model.eval()


@pytest.mark.parametrize("kind", ["clip", "align"])
def test_transformers_adapter_round_trip_and_logits(tmp_path, kind):
    from PIL import Image

    from biobench.backbones import create_backbone
    from biobench.zeroshot.adapters import create_contrastive_model

    original = save_tiny_hf(tmp_path, kind)
    name = f"hf:{tmp_path}"
    model = create_contrastive_model(name)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    backbone = model.image_backbone()
    pixels = backbone.transform(image).unsqueeze(0)
    texts = ["a photo of a red .", "a microscope image of blue ."]
    with torch.no_grad():
        tokens = model.tokenizer(texts, padding=True, return_tensors="pt")
        reference = original(input_ids=tokens["input_ids"],
                             attention_mask=tokens["attention_mask"], pixel_values=pixels)
    image_emb = backbone(pixels).numpy()
    text_emb = model.encode_texts(texts)
    # the checkpoint round trip gives the saved model's own embeddings
    assert np.allclose(image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True),
                       reference.image_embeds.numpy(), atol=1e-5)
    assert np.allclose(text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True),
                       reference.text_embeds.numpy(), atol=1e-5)
    # scale * cosine is the model's logits_per_image
    cos = (image_emb / np.linalg.norm(image_emb)) @ \
        (text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)).T
    assert np.allclose(model.similarity_scale * cos, reference.logits_per_image.numpy(),
                       atol=1e-4)
    # the scheme also serves probes: same features through create_backbone
    assert torch.allclose(create_backbone(name)(pixels), backbone(pixels))


def test_unsupported_transformers_model_type_is_named(tmp_path):
    from biobench.backbones import UnknownModel, model_info

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnknownModel, match="'bert' is not supported"):
        model_info(f"hf:{tmp_path}")


# ---- interpolated contrastive models (WiSE-FT zero-shot) ---------------------------------------
def save_perturbed_copy(source, folder, seed: int = 1):
    """A 'fine-tuned' twin: the same files with every float tensor moved by seeded noise."""
    import shutil

    import transformers

    shutil.copytree(source, folder)
    model = transformers.AutoModel.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))
    model.save_pretrained(folder)
    return model.eval()


def test_interpolated_contrastive_mixes_both_towers_exactly_at_the_ends(tmp_path):
    from PIL import Image

    from biobench.zeroshot.adapters import create_contrastive_model, is_contrastive_name

    base = save_tiny_hf(tmp_path / "base", "clip")
    tuned = save_perturbed_copy(tmp_path / "base", tmp_path / "tuned")
    pair = f"hf:{tmp_path / 'base'}|hf:{tmp_path / 'tuned'}"
    assert is_contrastive_name(f"interp:0.5:{pair}")
    texts = ["a red photo .", "a blue microscope image ."]
    image = Image.new("RGB", (40, 40), (200, 30, 60))

    def embeddings(name):
        model = create_contrastive_model(name)
        backbone = model.image_backbone()
        with torch.no_grad():
            img = backbone(backbone.transform(image)[None]).numpy()
        return model, img, model.encode_texts(texts)

    ends = {alpha: embeddings(f"interp:{alpha}:{pair}") for alpha in (0, 1)}
    for alpha, parent in ((0, f"hf:{tmp_path / 'base'}"), (1, f"hf:{tmp_path / 'tuned'}")):
        model, img, txt = ends[alpha]
        _, parent_img, parent_txt = embeddings(parent)
        assert np.array_equal(img, parent_img) and np.array_equal(txt, parent_txt)
        # the scale is the parent's own logit scale
        assert model.similarity_scale == create_contrastive_model(parent).similarity_scale
        assert model.image_backbone().info.name == f"interp:{alpha}:{pair}"
    # alpha = 0.5: the model holds the mean of the two parents' tensors, in both towers
    half = create_contrastive_model(f"interp:0.5:{pair}")
    mixed, a, b = half.model.state_dict(), base.state_dict(), tuned.state_dict()
    for key in ("text_projection.weight", "visual_projection.weight", "logit_scale"):
        assert torch.allclose(mixed[key], (a[key] + b[key]) / 2, atol=1e-6), key
    assert half.similarity_scale == pytest.approx(float(((a["logit_scale"] + b["logit_scale"])
                                                         / 2).exp()), rel=1e-5)


def test_interpolating_clip_with_align_is_refused(tmp_path):
    from biobench.backbones.registry import WeightsMismatch
    from biobench.zeroshot.adapters import create_contrastive_model

    save_tiny_hf(tmp_path / "clip", "clip")
    save_tiny_hf(tmp_path / "align", "align")
    with pytest.raises(WeightsMismatch, match="cannot interpolate"):
        create_contrastive_model(f"interp:0.5:hf:{tmp_path / 'clip'}|hf:{tmp_path / 'align'}")
