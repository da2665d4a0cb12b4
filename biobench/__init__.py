"""BioBench book: frozen vision backbones -> cached features -> probes -> metrics with
bootstrap intervals -> a SQLite results store.

The modules follow the data flow, one place for each step:

- ``biobench.backbones``  model registry; f(images) -> (B, D) features
- ``biobench.tasks``      task registry; train/test examples, class names, metric
- ``biobench.features``   batched extraction, cached on disk
- ``biobench.probes``     scikit-learn estimators fitted on features
- ``biobench.metrics``    macro-F1, accuracy and the task-specific scores
- ``biobench.stats``      bootstrap intervals, paired tests, Holm correction
- ``biobench.store``      SQLite results store (runs + per-example predictions)
- ``biobench.evaluate``   one (model, task) evaluation, end to end
- ``biobench.cli``        the ``biobench`` command
"""

__version__ = "0.1.0"
