"""Integrations with training frameworks, each imported only when its module is.

One module per framework, each an optional extra that imports its framework
itself (``import cloudckpt`` imports none of them):

* :mod:`cloudckpt.integrations.dcp`: ``Writer`` and ``Reader``, a PyTorch DCP
  ``StorageWriter``/``StorageReader`` (``cloudckpt.dcp``; ``pip install 'cloudckpt[dcp]'``);
* :mod:`cloudckpt.integrations.lightning`: ``CloudCheckpointIO``, a PyTorch
  Lightning ``CheckpointIO`` plugin (``pip install 'cloudckpt[lightning]'``);
* :mod:`cloudckpt.integrations.huggingface`: ``CheckpointManagerCallback``, a
  Hugging Face ``TrainerCallback`` (``pip install 'cloudckpt[huggingface]'``).
"""
