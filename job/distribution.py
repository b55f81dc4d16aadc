"""Distribution: the one place that chooses a tf.distribute strategy. Everything else receives it.

Single node: MirroredStrategy over every visible GPU; without GPUs, over every logical CPU device
(one, unless the process split the CPU, which tests do to run two replicas on a laptop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tensorflow as tf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topology:
    replicas: int  # replicas across all workers
    workers: int
    worker_index: int
    is_chief: bool
    devices: tuple[str, ...]  # this worker's devices


def make_strategy() -> tuple[tf.distribute.Strategy, Topology]:
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    topo = Topology(replicas=strategy.num_replicas_in_sync, workers=1, worker_index=0, is_chief=True,
                    devices=tuple(devices))
    log.info("strategy: MirroredStrategy over %d %s device(s): %s", len(devices),
             "GPU" if gpus else "CPU", ", ".join(devices))
    return strategy, topo
