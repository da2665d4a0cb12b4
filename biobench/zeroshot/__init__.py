"""Zero-shot scoring: a model answers multiple-choice questions about images without training.

``biobench.zeroshot.base`` holds the contract (questions, answers, the model kinds);
``contrastive`` scores CLIP-style models (image vs option captions), ``generative`` asks chat
models through an OpenAI-compatible endpoint, ``baseline`` is μ-Bench's random baseline, and
``templates`` turns a BioBench task's class names into questions.
"""
