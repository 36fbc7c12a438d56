"""Fine-tuning, hyperparameter search, evaluation and export of the emotion model.

Produces a Hugging Face model directory (safetensors, ``id2label`` = the six emotions) that
the worker serves; the two meet only there, so nothing here imports ``worker``. Modules:

- ``data``: reading the labelled splits (hub dataset or a local directory), ``sampling``:
  stratified subsets and dev splits, ``base_models``: which checkpoint to start from,
- ``config``: hyperparameters and run options, ``trainer``: the Hugging Face Trainer set-up,
- ``train``, ``tune``, ``evaluate``: the three commands, ``cli``: their argparse wiring,
- ``metrics``, ``plots``, ``card``, ``export``, ``predict``, ``baseline``: shared pieces.

Importing this package is cheap: torch and transformers load only when a command runs.
"""
