"""Hugging Face ``transformers``: a ``TrainerCallback`` that checkpoints through a :class:`~cloudckpt.CheckpointManager`.

``Trainer(..., callbacks=[CheckpointManagerCallback("s3://bucket/run")])``
saves, whenever the ``Trainer`` would save (``save_strategy="steps"`` or
``"epoch"``), the model, optimizer, LR scheduler, RNG states (python,
numpy, torch) and trainer state as one cloudckpt checkpoint
``<directory>/ckpt-<global_step>`` — to any fsspec URL, committed by a
create-only manifest, checked by crc32c on load, kept by the manager's
retention (``max_to_keep``, ``keep_checkpoint_every_n_hours``) and fenced by
its ownership. The ``Trainer`` then writes no ``checkpoint-N`` directory of
its own (the callback clears ``control.should_save``).

Resuming: ``trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint(trainer))``.
The method finds the latest checkpoint of the directory (None if there is
none: a fresh start), and gives the ``Trainer`` a small local directory
holding what its own resume reads to place itself — ``trainer_state.json``
and the model weights (``save_pretrained``, safetensors) — so that it skips
the batches already trained as it does for its own checkpoints. The
callback restores the optimizer and scheduler when training begins, and the
RNG states where the ``Trainer`` restores its own: before the first epoch
resumed at an epoch boundary, after the skipped batches otherwise.

Not supported (refused when the ``Trainer`` is built): ``save_strategy="best"``
and ``load_best_model_at_end``, which need the ``Trainer``'s own
``checkpoint-N`` directories; DeepSpeed and FSDP.

Example:
    >>> from cloudckpt.integrations.huggingface import CheckpointManagerCallback
    >>> callback = CheckpointManagerCallback("memory://doc-hf/run", max_to_keep=2)
    >>> callback.directory
    'memory://doc-hf/run'
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import tempfile
from typing import Any

import ml_dtypes  # noqa: F401  (here, with the framework: a first save or load would otherwise pay its import)
import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from cloudckpt.api import load
from cloudckpt.checkpoint import Checkpoint
from cloudckpt.manager.checkpoint_manager import CheckpointManager, latest_checkpoint

__all__ = ["CheckpointManagerCallback", "RNGState"]

TRAINER_STATE_NAME = "trainer_state.json"


class RNGState:
    """The python, numpy and torch (CPU, and CUDA when present) RNG states as a checkpointable object.

    Example:
        >>> import random
        >>> rng = RNGState(); saved = rng.state_dict(); a = random.random()
        >>> rng.load_state_dict(saved); random.random() == a
        True
    """

    def state_dict(self) -> dict[str, Any]:
        """The current states (the form the ``Trainer``'s own ``rng_state.pth`` holds).

        Example:
            >>> sorted(RNGState().state_dict())[:3]
            ['cpu', 'numpy', 'python']
        """
        state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                                 "cpu": torch.random.get_rng_state()}  # fmt: skip
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.random.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set every RNG to ``state``.

        Example:
            >>> import torch
            >>> rng = RNGState(); saved = rng.state_dict(); a = torch.rand(1)
            >>> rng.load_state_dict(saved); bool(torch.rand(1) == a)
            True
        """
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(tuple(state["numpy"]))
        torch.random.set_rng_state(torch.as_tensor(state["cpu"], dtype=torch.uint8).cpu())
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.random.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]])


class _TrainerStateRecord:
    """The ``TrainerState`` as JSON text, and whether it was saved at the end of an epoch."""

    def __init__(self) -> None:
        self.state: TrainerState | None = None

    def state_dict(self) -> dict[str, Any]:
        assert self.state is not None
        epoch = float(self.state.epoch or 0.0)
        return {"json": json.dumps(dataclasses.asdict(self.state), sort_keys=True), "epoch_end": epoch.is_integer()}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # restored by resume_from_checkpoint, not here
        pass


class CheckpointManagerCallback(TrainerCallback):
    """Save the ``Trainer``'s whole training state through a :class:`~cloudckpt.CheckpointManager` at ``directory``.

    ``directory`` is any fsspec URL or local path; ``max_to_keep``,
    ``keep_checkpoint_every_n_hours``, ``storage_options`` and
    ``async_save`` are the manager's (see :class:`~cloudckpt.CheckpointManager`).
    Checkpoints are numbered by ``state.global_step``.

    Example:
        >>> callback = CheckpointManagerCallback("memory://doc-hf-cb/run", max_to_keep=3)
        >>> callback.manager is None          # created when training begins
        True
    """

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int | None = 3,
        keep_checkpoint_every_n_hours: float | None = None,
        storage_options: dict[str, Any] | None = None,
        async_save: bool = False,
    ) -> None:
        self.directory = str(directory)
        self.max_to_keep = max_to_keep
        self.keep_checkpoint_every_n_hours = keep_checkpoint_every_n_hours
        self.storage_options = storage_options
        self.async_save = async_save
        self.manager: CheckpointManager | None = None
        self._record = _TrainerStateRecord()
        self._pending: dict[str, Any] | None = None  # what resume_from_checkpoint loaded, until it is applied
        self.resumed_from: str | None = None  # the URL resume_from_checkpoint loaded
        self._stub: str | None = None  # the local directory it wrote for the Trainer, removed when training ends
        self._due = False  # a save the Trainer asked for, made once this step's log is in the state

    # -- resume -----------------------------------------------------------
    def resume_from_checkpoint(self, trainer: Any) -> str | None:
        """Prepare ``trainer`` to resume from the latest checkpoint of the directory; return the argument for
        ``trainer.train(resume_from_checkpoint=...)``, or None when there is no checkpoint yet.

        Loads the checkpoint (checksums checked), writes ``trainer_state.json``
        and the model weights to a new local temporary directory (what the
        ``Trainer`` reads to place itself in the data) and returns its path;
        the optimizer, scheduler and RNG states are restored by the callback
        during ``train``.

        Example:
            >>> CheckpointManagerCallback("memory://doc-hf-resume/empty").resume_from_checkpoint(trainer=None) is None
            True
        """
        url = latest_checkpoint(self.directory, storage_options=self.storage_options)
        if url is None:
            return None
        saved = load(url, storage_options=self.storage_options, framework="torch")
        stub = tempfile.mkdtemp(prefix="cloudckpt-resume-")
        trainer.model.save_pretrained(stub, state_dict=saved["model"])
        with open(f"{stub}/{TRAINER_STATE_NAME}", "w", encoding="utf-8") as f:
            f.write(saved["trainer_state"]["json"])
        self._pending = {"url": url, **saved}
        self.resumed_from, self._stub = url, stub
        return stub

    # -- events -----------------------------------------------------------
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Refuse what needs the ``Trainer``'s own checkpoint directories.

        Example:
            >>> from transformers import TrainingArguments, TrainerState, TrainerControl
            >>> args = TrainingArguments("/tmp/doc-hf-init", save_strategy="steps", report_to="none")
            >>> CheckpointManagerCallback("memory://doc-hf-init").on_init_end(args, TrainerState(), TrainerControl())
        """
        if str(getattr(args.save_strategy, "value", args.save_strategy)) == "best" or args.load_best_model_at_end:
            raise ValueError(
                "CheckpointManagerCallback cannot serve save_strategy='best' or load_best_model_at_end=True: both "
                "need the Trainer's own checkpoint-N directories; use save_strategy='steps' or 'epoch' (the manager "
                "can keep the best checkpoint with best_metric=...)"
            )

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Open the manager on the live objects; restore the optimizer and scheduler of a resumed run.

        Example:
            >>> CheckpointManagerCallback.on_train_begin.__name__
            'on_train_begin'
        """
        self._record.state = state
        ckpt = Checkpoint(model=kwargs["model"], optimizer=kwargs["optimizer"], scheduler=kwargs["lr_scheduler"],
                          rng=RNGState(), trainer_state=self._record)  # fmt: skip
        if self.manager is not None:  # a second train() with the same callback
            self.manager.close()
        self.manager = CheckpointManager(
            ckpt, self.directory, max_to_keep=self.max_to_keep,
            keep_checkpoint_every_n_hours=self.keep_checkpoint_every_n_hours,
            storage_options=self.storage_options, async_save=self.async_save,
        )  # fmt: skip
        if self._pending is not None:
            kwargs["optimizer"].load_state_dict(self._pending["optimizer"])
            kwargs["lr_scheduler"].load_state_dict(self._pending["scheduler"])

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Restore the RNG states of a run resumed at an epoch boundary (before the data loader draws from them).

        Example:
            >>> CheckpointManagerCallback.on_epoch_begin.__name__
            'on_epoch_begin'
        """
        if self._pending is not None and self._pending["trainer_state"]["epoch_end"]:
            RNGState().load_state_dict(self._pending["rng"])
            self._pending = None

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Restore the RNG states of a run resumed inside an epoch (after the skipped batches).

        Example:
            >>> CheckpointManagerCallback.on_step_begin.__name__
            'on_step_begin'
        """
        if self._due:  # the log that was to follow the save did not happen
            self._save(state)
        if self._pending is not None:
            RNGState().load_state_dict(self._pending["rng"])
            self._pending = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Make a save that was due at this step, now that its log is in the trainer state.

        Example:
            >>> CheckpointManagerCallback.on_log.__name__
            'on_log'
        """
        if self._due:
            self._save(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Save where the ``Trainer`` would, instead of its own ``checkpoint-N`` directory.

        Example:
            >>> CheckpointManagerCallback.on_step_end.__name__
            'on_step_end'
        """
        self._save_if_due(state, control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Save at the end of an epoch when the ``Trainer`` would (``save_strategy="epoch"``).

        Example:
            >>> CheckpointManagerCallback.on_epoch_end.__name__
            'on_epoch_end'
        """
        self._save_if_due(state, control)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Wait for a background save (``async_save=True``) to commit; remove the local resume directory.

        Example:
            >>> CheckpointManagerCallback("memory://doc-hf-end").on_train_end(None, None, None)
        """
        if self._due:
            self._save(state)
        if self.manager is not None:
            self.manager.sync()
        if self._stub is not None:
            shutil.rmtree(self._stub, ignore_errors=True)
            self._stub = None

    def _save_if_due(self, state: TrainerState, control: TrainerControl) -> None:
        if not control.should_save or self.manager is None:
            return
        control.should_save = False  # the Trainer writes no checkpoint-N of its own
        self._due = True
        if not control.should_log:  # otherwise on_log saves, with this step's log in the state (as the Trainer does)
            self._save(state)

    def _save(self, state: TrainerState) -> None:
        self._due = False
        if self.manager is not None and state.is_world_process_zero:
            self._record.state = state
            self.manager.save(checkpoint_number=state.global_step)
