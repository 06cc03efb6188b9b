"""Training, evaluation, checkpoints and resume.

``fit(cfg, out_dir)`` trains ``cfg.model`` on ``cfg.data`` and writes into ``out_dir``:

- ``checkpoint.ckpt``: weights, optimizer state and progress (``relpsp.checkpoint`` format: no pickle,
  atomic), written every ``checkpoint_every`` steps, at the end of every epoch's steps (before its
  evaluation, so a failure there loses no training) and after that evaluation;
- ``metrics.jsonl``: one JSON line per finished epoch, rewritten atomically from the history kept in
  the checkpoint just after that checkpoint is saved (a crash between the two leaves the file one line
  behind the checkpoint, and the resume rewrites it from the checkpoint);
- ``results.json``: final test accuracy and the number of test samples, resolved config, versions, device, wall time, per-layer
  firing rates, the fractions of samples with no output spike and with a tied decision, and
  ``sessions``: the code version, device and starting point of every call that trained the run (a resume
  under other code is visible there; ``versions`` is the last call's).

Weight averaging (``train.ema_decay = d > 0``): after every optimizer step the averaged weights become
``w_avg <- d * w_avg + (1 - d) * w``, starting from the initial weights. The averaged network is the one
evaluated and reported, and the checkpoint's ``model.*`` arrays hold it (so ``eval``, ``simulate``,
``cost`` and ``export`` use it); the weights being trained are kept as ``training.model.*`` for resume,
and each epoch's metrics also give their accuracy as ``raw_test_accuracy`` (and ``raw_val_accuracy``
with a validation split, so that averaging or not can be chosen on validation data).

Determinism: the weights come from ``seed``; the sample order of epoch ``e`` is a permutation drawn from
a generator seeded with ``(seed, e)``; the learning rate is a pure function of the step. A run resumed
from any checkpoint therefore replays exactly the steps an uninterrupted run would take (on CPU, with
the same thread count and number of processes).

Data parallel (``torchrun``, see README): when a ``torch.distributed`` process group is initialised
(``relpsp train`` initialises one when ``WORLD_SIZE > 1``), every rank takes a contiguous
``1/world_size`` slice of each global batch of the same seeded epoch order, so the union over ranks is
exactly the single-process batch; ``train.batch_size`` stays the *global* batch. Each rank's loss is the
*sum* over its slice divided by the global batch size, and DistributedDataParallel sums the gradients
(a sum communication hook instead of the default mean), so the update is the single-process mean-loss
gradient also for a last batch that does not split evenly. Batch-level quantities of the loss (the time
given to silent outputs, the silent-penalty horizon) are reduced across ranks first. Metrics and
evaluations are reduced across ranks; rank 0 alone prints and writes files, and every rank resumes from
the same checkpoint. The result equals a single-process run up to float rounding (the gradient sums are
added in a different order), which ``tests/test_distributed.py`` checks.

The package's modules, in the order they build on each other: ``runtime`` (threads, versions, device
name), ``distributed`` (ranks and reductions), ``validation`` (config checks), ``inputs`` (splits,
sample order, augmentation), ``evaluation``, ``regularisers`` (weight averaging, silent-neuron penalties,
spike dropout), ``checkpointing`` (training checkpoints, what a resume may change), ``run_folder`` (lock,
metrics and results files) and ``loop`` (``fit``). The names below are the public API.
"""

from __future__ import annotations

from relpsp.train.checkpointing import CHECKPOINT_NAME, TRAINING_PREFIX, load_trained
from relpsp.train.distributed import DistInfo, dist_info, init_distributed
from relpsp.train.evaluation import confusion_counts, evaluate, margin_summary
from relpsp.train.inputs import data_options, load_splits, run_split
from relpsp.train.loop import fit, lr_at, make_optimizer
from relpsp.train.regularisers import WeightAverage
from relpsp.train.runtime import device_name, set_threads

__all__ = [
    "CHECKPOINT_NAME",
    "TRAINING_PREFIX",
    "DistInfo",
    "WeightAverage",
    "confusion_counts",
    "data_options",
    "device_name",
    "dist_info",
    "evaluate",
    "fit",
    "init_distributed",
    "load_splits",
    "load_trained",
    "lr_at",
    "make_optimizer",
    "margin_summary",
    "run_split",
    "set_threads",
]
