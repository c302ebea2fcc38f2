"""Managing a directory of checkpoints the way ``tf.train.CheckpointManager`` does.

``checkpoint_manager`` (TF semantics: save, restore, latest), ``owner``
(ownership, fencing, gc, retention applied), ``leader`` (what rank 0 decides
for every rank), ``background`` (async saves), ``options``, ``retention``
(pure decisions), ``preemption``. The manager decides; the layout package
(:mod:`cloudckpt.layout`) reads and writes. Nothing here imports the storage layer.
"""
