"""Training: optimizer with a warm-up/linear-decay schedule, a loss built for logits, and fit().

The classifier outputs logits (no softmax), so the loss is
SparseCategoricalCrossentropy(from_logits=True). Built for probabilities instead, the loss
squashes already-unnormalised scores and the model barely learns - the classic silent bug this
job exists to rule out (tests/test_training.py proves the difference).

Speed levers, each chosen by TrainConfig and measured by `make bench` (bench/README.md):
precision (mixed bf16/fp16 with a float32 head and loss), XLA (`jit_compile`) and
`steps_per_execution`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from job.checkpoints import CheckpointStore
from job.config import TrainConfig
from job.errors import BadInputError, Interrupted

log = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm", "layer_norm")
# The task head's layer names across architectures (BERT, DistilBERT, RoBERTa, GPT-2, XLNet): kept
# in float32 under mixed precision so logits, and the loss computed from them, are float32.
HEAD_LAYERS = ("classifier", "pre_classifier", "score", "logits_proj", "sequence_summary")
# --precision values -> Keras dtype policy names.
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


# Where the kernel lists the CPU's instruction-set flags (a module constant so tests can point it
# at a cpuinfo of another machine).
CPUINFO = "/proc/cpuinfo"
# Flags of CPUs that compute bfloat16 natively (Intel Cooper Lake/Sapphire Rapids on, AMD Zen 4 on):
# there mixed bf16 measured about +20% at the same accuracy. Without them TF emulates bf16 through
# float32 conversions, and the gain is neither large nor reliable (bench/README.md).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(path: str | None = None) -> frozenset[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open(path or CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(precision: str) -> str:
    """auto: bf16 on GPUs with bfloat16 tensor cores (compute capability 8.0+, Ampere on), fp16
    with loss scaling on older tensor-core GPUs (7.x); on CPU, bf16 where the CPU computes it natively
    (AVX512-BF16 or AMX), else fp32."""
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "bf16" if cpu_flags() & BF16_CPU_FLAGS else "fp32"
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability") for g in gpus]
    if any(c is None for c in capabilities):
        return "fp32"
    oldest = min(capabilities)
    return "bf16" if oldest >= (8, 0) else "fp16" if oldest >= (7, 0) else "fp32"


def set_precision(precision: str) -> str:
    """Set the Keras dtype policy for models built from now on; call before building the model.
    Returns the precision resolved from `auto`."""
    resolved = resolve_precision(precision)
    tf.keras.mixed_precision.set_global_policy(POLICIES[resolved])
    return resolved


def jit_compile_enabled(cfg: TrainConfig) -> bool:
    """auto: XLA on GPUs (fused kernels, a handful of padded shapes); off on CPU, where XLA's own
    matmuls are no faster than oneDNN's and each new batch width costs a 10-40 s compile."""
    if cfg.jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return cfg.jit_compile == "on"


def _float32_head(model) -> None:
    """Under mixed precision, compute the task head in float32: logits and loss stay float32.

    The head's variables are already float32 (AutoCastVariable storage); switching the layers'
    policy makes them read and compute in float32, and casts their 16-bit input up.
    """
    if model.dtype_policy.compute_dtype == "float32":
        return
    heads = [getattr(model, n) for n in HEAD_LAYERS if isinstance(getattr(model, n, None), tf.keras.layers.Layer)]
    if not heads:
        raise BadInputError(f"--precision: cannot find the classification head of {type(model).__name__} "
                            "to keep it in float32; use --precision fp32")
    for head in heads:
        for layer in head._flatten_layers(include_self=True):
            layer._set_dtype_policy(tf.keras.mixed_precision.Policy("float32"))


@tf.keras.utils.register_keras_serializable(package="finetune_job")
class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """0 -> peak linearly over `warmup_steps`, then peak -> 0 linearly at `total_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        decay_span = float(max(self.total_steps - self.warmup_steps, 1))
        decay = self.peak * tf.maximum(0.0, (self.total_steps - step) / decay_span)
        return tf.where(step < self.warmup_steps, warm, decay)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


class LazyRowsAdamW(tf.keras.optimizers.AdamW):
    """AdamW that moves only the rows of a looked-up table that the batch used.

    Not offered as an option yet: on SST-2 (8,000 rows, MiniLM, bf16) it trained the epoch in 125 s
    against dense AdamW's 190 s at dev accuracy 0.8475 vs 0.8509, but the run's SavedModel export
    then failed (its variables file missing): to be found before it becomes `--embedding-updates lazy`.

    A table read with a gather (the word, position and segment embeddings) gets its gradient as
    IndexedSlices: a few hundred rows of the 30k-row word table. Keras' AdamW still decays every
    moment and moves every row each step (on MiniLM 11.7M of the 22.7M parameters, most of the
    dense update's ~0.08 s a step on 2 CPUs). Here those rows' moments, their Adam step and their
    weight decay are computed only where the gradient has rows, like TF Addons' LazyAdam: a row no
    batch touches keeps its pretrained value instead of drifting on stale momentum and decay.
    Dense gradients (every other weight) are updated exactly as AdamW does."""

    def apply_gradients(self, grads_and_vars, name=None, **kwargs):
        grads_and_vars = list(grads_and_vars)
        # Which variables get rows: known while tracing, from the gradients' types.
        self._row_keys = {self._var_key(v) for g, v in grads_and_vars if isinstance(g, tf.IndexedSlices)}
        return super().apply_gradients(grads_and_vars, name=name, **kwargs)

    def _use_weight_decay(self, variable):
        if self._var_key(variable) in getattr(self, "_row_keys", ()):
            return False  # decayed row by row in update_step
        return super()._use_weight_decay(variable)

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        rows, g = gradient.indices, gradient.values  # rows are unique: apply_gradients deduplicated them
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * g
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(g)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        delta = alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon)
        if self.weight_decay and super()._use_weight_decay(variable):
            delta += lr * tf.cast(self.weight_decay, dtype) * tf.gather(variable, rows)
        variable.scatter_sub(tf.IndexedSlices(delta, rows))


def make_optimizer(cfg: TrainConfig, total_steps: int) -> tf.keras.optimizers.Optimizer:
    warmup = int(math.floor(total_steps * cfg.warmup_ratio))
    schedule = WarmupLinearDecay(cfg.learning_rate, warmup, total_steps)
    opt = tf.keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay,
                                    epsilon=1e-8, clipnorm=None)
    # Decaying biases and LayerNorm scales hurts fine-tuning (BERT's original recipe skips them).
    opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return opt


def compile_model(model, cfg: TrainConfig, total_steps: int, spec=None, class_weights=None) -> None:
    """Call inside strategy.scope(), on a model built after set_precision(). `spec` (job.problem,
    default single-label) chooses the loss and metrics; `class_weights` weigh classes or labels."""
    from job import problem

    spec = spec or problem.ProblemSpec(problem.SINGLE, ())
    _float32_head(model)
    if cfg.embedding_updates == "frozen":
        freeze_embeddings(model)
    optimizer = make_optimizer(cfg, total_steps)
    if model.dtype_policy.compute_dtype == "float16":
        # fp16 gradients underflow without it; the scale adapts (halves on overflow, skips the step).
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer,
                  loss=problem.loss(spec, class_weights), metrics=problem.keras_metrics(spec),
                  jit_compile=jit_compile_enabled(cfg), steps_per_execution=cfg.steps_per_execution)
    _fast_first_step(model)


def freeze_embeddings(model) -> None:
    """`--embedding-updates frozen`: the input embeddings (word, position, segment tables and their
    LayerNorm) keep their pretrained values; no gradient, no optimizer state, no update for them."""
    layer = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(layer, tf.keras.layers.Layer):
        raise BadInputError(f"--embedding-updates frozen: {type(model).__name__} does not expose its input "
                            "embeddings as a layer; use --embedding-updates dense")
    layer.trainable = False


def _fast_first_step(model) -> None:
    """Cut the first step's trace (tiny BERT, 2 CPUs: 10.89 s -> 4.63 s, bench/results/first_step-tiny.json).

    - The optimizer's slot variables are built now: a tf.function that creates variables on its
      first call is traced twice, once to create them and once more to run without creating.
    - The step functions are not converted by AutoGraph: Keras' and transformers' step and model
      code branch on Python values only (the text signatures are traced the same way, job.export),
      and converting all that source cost more than the trace itself.
    Inside strategy.scope(), like compile."""
    model.optimizer.build(model.trainable_variables)
    for name in ("train_step", "test_step", "predict_step"):
        setattr(model, name, tf.autograph.experimental.do_not_convert(getattr(model, name)))


class FailOnNaN(tf.keras.callbacks.Callback):
    """Stop at the first non-finite loss: continuing only burns GPU hours on a dead model."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True
            self.failed_at = batch
            raise TrainingDiverged(f"the training loss became {loss} at step {batch + 1}: lower --learning-rate "
                                   "or check the data")


class TrainingDiverged(BadInputError):
    pass


class Throughput(tf.keras.callbacks.Callback):
    """Wall time per epoch and of the first step (it includes tracing). With steps_per_execution
    N, a "step" here is one execution of N optimizer steps."""

    def __init__(self):
        super().__init__()
        self.epoch_seconds: list[float] = []
        self.first_step_seconds: float | None = None
        self.first_step_done_at: float | None = None  # time.time(): process start -> first step
        self._t0 = self._tb = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._t0)

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_step_seconds is None:
            self._tb = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step_seconds is None:
            self.first_step_seconds = time.perf_counter() - self._tb
            self.first_step_done_at = time.time()


class Preempted(Interrupted):
    """SIGTERM: see job.errors.Interrupted (why it is not an Exception)."""


class Preemption:
    """SIGTERM handling: outside training stop at once; inside, finish the step, checkpoint, stop.

    Kubernetes sends SIGTERM on eviction, preemption and deletion, then SIGKILL after the grace
    period (30 s by default): one step plus one checkpoint upload must fit in it.
    """

    MESSAGE = "received SIGTERM (eviction or preemption): run again with the same arguments to resume"

    def __init__(self):
        self.requested = threading.Event()
        self.deferred = False

    def handler(self, signum, frame):
        self.requested.set()
        if not self.deferred:
            raise Preempted(self.MESSAGE)

    def check(self) -> None:
        """Raise now if a SIGTERM arrived whose exception never reached the job's top level.

        The handler raises wherever the main thread is, and some places drop what is raised there:
        a finalizer (`__del__`, a weakref callback: "Exception ignored in ..."), a C extension that
        clears the error it got back from a Python callback. Seen in CI: a SIGTERM 0.2 s into data
        loading was lost, and the job stopped only after its first training step. The flag is set
        either way, so the run looks at it between phases and before training starts."""
        if self.requested.is_set() and not self.deferred:
            raise Preempted(self.MESSAGE)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled on the main thread (e.g. under a test runner)
            return
        previous = signal.signal(signal.SIGTERM, self.handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


class Checkpointing(tf.keras.callbacks.Callback):
    """Saves every `every` optimizer steps and after each epoch's validation; stops on SIGTERM."""

    def __init__(self, store: CheckpointStore, checkpoint: tf.train.Checkpoint, every: int,
                 history: dict, preemption: Preemption | None):
        super().__init__()
        self.store, self.checkpoint, self.every = store, checkpoint, every
        self.history = history  # epoch metrics so far, carried across resumes
        self.preemption = preemption
        self._saved_at = 0

    def on_train_begin(self, logs=None):
        self._saved_at = self._step()

    def _log_preemption_budget(self, step: int) -> None:
        """Save once after the first step (the optimizer's moments exist only from then on, and are
        two thirds of the state) and log what it took: the operator's preemption budget on this
        hardware and storage (k8s/README.md, "Spot and flex-start")."""
        self._budget_logged = True
        self.store.save(self.checkpoint, step, self.history)
        self._saved_at = step
        seconds, size = self.store.last_save
        if self.store.enabled:
            log.info("preemption budget: a checkpoint save takes %.2f s here (%.1f MB); the pod's "
                     "terminationGracePeriodSeconds must cover it plus one training step", seconds, size / 1e6)

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if self.preemption is not None and self.preemption.requested.is_set():
            self.store.save(self.checkpoint, step, self.history)
            raise Preempted(Preemption.MESSAGE + f" (checkpoint saved at step {step})")
        if not getattr(self, "_budget_logged", False):
            self._log_preemption_budget(step)
            return
        # Batches end every steps_per_execution steps: save when a multiple of `every` was passed.
        if self.every and step // self.every > self._saved_at // self.every:
            self.store.save(self.checkpoint, step, self.history)
            self._saved_at = step

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        self.store.save(self.checkpoint, self._step(), self.history)


def progress_verbosity() -> int:
    # A live bar on a terminal; one line per epoch in pod logs (no megabytes of carriage returns).
    return 1 if sys.stdout.isatty() else 2


def fit(model, make_train_ds, validation, cfg: TrainConfig, steps_per_epoch: int, store: CheckpointStore,
        preemption: Preemption | None = None, callbacks=(), selection=None) -> tuple[dict, Throughput]:
    """Train for cfg.epochs, resuming from `store` when it holds a save of this run.

    `make_train_ds(epoch, skip)` streams batches from `epoch`, skipping its first `skip` batches,
    so a resumed run sees exactly the batches an uninterrupted one would have seen next.
    `validation` is (dataset, steps). `selection` (a job.selection.BestEpoch, created with an empty
    history dict) watches a metric: its best weights are saved in every checkpoint, training stops
    early when it says so, and the model ends with the best epoch's weights.
    """
    val_ds, val_steps = validation
    extra = {"best": selection.attach(model)} if selection is not None else {}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, **extra)
    resume = store.restore(checkpoint)
    start = resume.step if resume else 0
    history = selection.history if selection is not None else {}
    history.update({k: list(v) for k, v in (resume.history if resume else {}).items()})
    meter = Throughput()
    saver = Checkpointing(store, checkpoint, cfg.checkpoint_every, history, preemption)
    watch = [selection] if selection is not None else []  # before the saver: it records what this adds
    epoch, skip = divmod(start, steps_per_epoch)
    legs = []  # (first epoch, end epoch, steps per epoch, batches to skip)
    if skip:
        # A resumed, part-done epoch runs on its own: Keras gives every epoch of a fit() one length.
        legs.append((epoch, epoch + 1, steps_per_epoch - skip, skip))
        epoch += 1
    if epoch < cfg.epochs:
        legs.append((epoch, cfg.epochs, steps_per_epoch, 0))
    if selection is not None and selection.should_stop():
        legs = []  # stopped early before the last attempt was interrupted: nothing left to train
    if preemption is not None:
        preemption.check()  # a SIGTERM before training: nothing to save, stop before the first step
        preemption.deferred = True
    try:
        for first, last, steps, skip_batches in legs:
            model.fit(make_train_ds(first, skip_batches), validation_data=val_ds, validation_steps=val_steps, epochs=last,
                      initial_epoch=first, steps_per_epoch=steps,
                      callbacks=[FailOnNaN(), meter, *watch, saver, *callbacks], verbose=progress_verbosity())
            if selection is not None and selection.should_stop():
                break
    finally:
        if preemption is not None:
            preemption.deferred = False
    if preemption is not None and preemption.requested.is_set():
        raise Preempted(Preemption.MESSAGE)
    if selection is not None:
        selection.restore_best(model)
    return history, meter
