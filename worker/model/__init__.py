"""The model: texts in, emotion predictions out, in this process or in one of its own.

One concept per module:
- api: what the rest of the worker sees (torch-free): ``ModelRunner``, ``ModelOptions``,
  ``Prediction``, ``ModelLoadError``, ``ModelUnavailable``
- loading: the model directory or hub id, its labels, the device and the numeric mode
- planning: where to cut a window into forward passes, and the threads of each pass
- packing: token rows made into a pass's tensors, padded or packed
- prepack: linear layers laid out once for oneDNN (fp32 on the CPU)
- runner: ``EmotionClassifier``, the model runner itself (imports torch)
- process: ``ModelProcess``, the runner in a child process (torch only in the child)

Only ``api`` is imported here, so ``import worker.model`` never loads torch.
"""

from emotion_stream.worker.model.api import (
    ModelLoadError,
    ModelOptions,
    ModelRunner,
    ModelUnavailable,
    Prediction,
    to_predictions,
)

__all__ = [
    "ModelFailing",
    "ModelLoadError",
    "ModelOptions",
    "ModelRunner",
    "ModelUnavailable",
    "Prediction",
    "to_predictions",
]
