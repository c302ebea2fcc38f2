"""Managing a directory of checkpoints the way ``tf.train.CheckpointManager`` does.

Numbering, intervals, retention (``retention``), the latest checkpoint,
restore-or-initialize, async saves and preemption (``preemption``). The
manager decides; the layout package (:mod:`cloudckpt.layout`) reads and
writes. Nothing here imports the storage layer.
"""
