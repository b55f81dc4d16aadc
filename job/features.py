"""Features: tokenize with the checkpoint's fast tokenizer, then batch with per-batch padding.

Tokenization calls the fast tokenizer on chunks of rows without padding and keeps the ids as
flat arrays + offsets. Each batch is padded only to its own longest row, rounded up to a multiple
of `pad_multiple`: 1 (exact) when steps run op by op, as on CPU, where a new shape costs nothing;
16 where XLA compiles the step (GPU), so it compiles max_length / 16 programs, not one per batch.
Batches are formed from length-sorted windows of shuffled rows, so padding stays small while the
order is still random. `python -m bench.bench` measures the padding fraction this gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from job.data import Split
from job.texts import release_unused

# Rows per length-sorting window = this x batch size: larger pads less, smaller shuffles more.
SORT_WINDOW_BATCHES = 50
# Batch widths are rounded up to a multiple of this when XLA compiles the step: a fixed handful of
# shapes (8 up to 128 tokens), each compiled once. Without XLA every width costs the same to run, so
# rows are padded to the batch's longest row exactly (SST-2: 4% padding instead of 40% at 16).
XLA_PAD_MULTIPLE = 16
# Rows per tokenizer call: large enough for the Rust tokenizer's threads, small enough for memory.
TOKENIZE_CHUNK = 16384


def pad_multiple(jit_compile: bool | None = None) -> int:
    """The width granularity for a step that XLA compiles or not (None: XLA iff a GPU is visible,
    the default of training.jit_compile_enabled)."""
    if jit_compile is None:
        jit_compile = bool(tf.config.list_physical_devices("GPU"))
    return XLA_PAD_MULTIPLE if jit_compile else 1


@dataclass(frozen=True)
class Encoded:
    """Token ids of every row as flat arrays + row offsets (a ragged layout without per-row objects).

    A model input that is the same for every real token (the attention mask is always 1 unpadded;
    segment ids are 0 for single texts) is held as that int, not as an array: at 10 million rows
    each stored int8 input costs 240 MB. Ids are uint16 when the vocabulary fits (int32 otherwise).
    """

    features: dict[str, np.ndarray | int]  # name -> flat values, or the value of every real token
    offsets: np.ndarray  # int64, len(rows) + 1
    labels: np.ndarray  # int32 class ids, or float32 targets (multi-label [n, K], regression [n])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.features)


def _flat(column, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(values, int64 offsets) of a chunked Arrow list column, one copy of the values."""
    import pyarrow.compute as pc

    chunks = column.chunks
    lengths = np.concatenate([pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in chunks]
                             or [np.zeros(0, np.int64)])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in chunks]
                            or [np.zeros(0, dtype)]).astype(dtype, copy=False)
    return values, offsets


def _single_text_segments(tokenizer, split: Split) -> bool:
    """Whether single texts get segment ids other than 0. They come from the tokenizer's template
    for one sequence, the same for every row (0 throughout for BERT; XLNet gives its final <cls>
    a 2), so a few rows tell; otherwise they would be tokenized and stored for every row to find 0."""
    probe = tokenizer(split.texts[:8].tolist() or ["x"], return_attention_mask=False, return_token_type_ids=True)
    return any(any(ids) for ids in probe.get("token_type_ids", []))


def encode(split: Split, tokenizer, max_length: int) -> Encoded:
    """Token ids of every row, unpadded, through `datasets.map(batched=True)` over the split's own
    Arrow texts (no copy into Python lists). Each chunk's ids leave as one Arrow list column of
    uint16/int32 values, so no Python int outlives its chunk; the Rust tokenizer spreads each chunk
    over every core."""
    import itertools

    import datasets
    import pyarrow as pa

    datasets.disable_progress_bars()
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    id_type = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    columns = {"text": split.texts.arrow}
    if split.pairs is not None:
        columns["pair"] = split.pairs.arrow
    segments = "token_type_ids" in names and (split.pairs is not None or _single_text_segments(tokenizer, split))

    def tokenize(batch):
        args = (batch["text"], batch["pair"]) if "pair" in batch else (batch["text"],)
        enc = tokenizer(*args, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=segments)
        ids = enc["input_ids"]
        lengths = np.fromiter(map(len, ids), np.int32, count=len(ids))
        offsets = np.zeros(len(ids) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        out = {"input_ids": np.fromiter(itertools.chain.from_iterable(ids), id_type, count=total)}
        if segments:
            out["token_type_ids"] = np.fromiter(itertools.chain.from_iterable(enc["token_type_ids"]), np.int8,
                                                count=total)
        return pa.table({n: pa.ListArray.from_arrays(pa.array(offsets), pa.array(v)) for n, v in out.items()})

    # Fingerprints given, not computed: datasets would hash the whole in-memory table to make one
    # (a transient copy of every text, ~670 bytes a row measured), and nothing is cached here.
    ds = datasets.Dataset(pa.table(columns), fingerprint="finetune-job-texts").map(
        tokenize, batched=True, batch_size=TOKENIZE_CHUNK, remove_columns=list(columns), keep_in_memory=True,
        new_fingerprint="finetune-job-tokens")
    table = ds.data.table
    del ds
    features: dict[str, np.ndarray | int] = {}
    offsets = np.zeros(len(split) + 1, np.int64)
    stored = ["input_ids"] + (["token_type_ids"] if segments else [])
    flat = {}
    for n in stored:
        if len(split):
            flat[n], offsets = _flat(table.column(n), id_type if n == "input_ids" else np.int8)
        else:
            flat[n] = np.zeros(0, id_type if n == "input_ids" else np.int8)
        table = table.drop_columns([n])  # frees the column's Arrow buffers before the next copy
    for n in names:
        if n == "attention_mask":
            features[n] = 1
        elif n == "token_type_ids" and (n not in flat or not flat[n].any()):
            features[n] = 0
        else:
            features[n] = flat[n]
    del table
    release_unused()  # the tokens' Arrow copy, now in numpy
    return Encoded(features, offsets, _targets(split.labels))


def _targets(labels) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.astype(np.float32 if labels.dtype.kind == "f" else np.int32)


def truncate(full: Encoded, split: Split, tokenizer, max_length: int) -> Encoded:
    """`full` (the rows of `split` encoded at a larger length) as if encoded at max_length.

    A fast tokenizer tokenizes a whole text before it truncates, so encoding at the model's limit
    once (to count every row's tokens) costs no more than encoding at max_length. The few rows
    longer than max_length are tokenized again at max_length (the tokenizer's own truncation,
    right for pairs and special tokens) and spliced in with one numpy gather.
    """
    lengths = full.lengths
    long = np.flatnonzero(lengths > max_length)
    if len(long) == 0:
        return full
    short = encode(split.take(long), tokenizer, max_length)
    new_lengths = lengths.copy()
    new_lengths[long] = short.lengths
    # Row r's tokens start at `start[r]` in the concatenation (full values, then the re-encoded ones).
    start = full.offsets[:-1].copy()
    start[long] = int(full.offsets[-1]) + short.offsets[:-1]
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(new_lengths, out=offsets[1:])
    source = np.repeat(start - offsets[:-1], new_lengths) + np.arange(int(offsets[-1]))
    feats = {}
    for n in full.names:
        a, b = full.features[n], short.features[n]
        if isinstance(a, int) and isinstance(b, int) and a == b:
            feats[n] = a
        else:
            a, b = (np.full(int(e.offsets[-1]), v, np.int8) if isinstance(v, int) else v
                    for v, e in ((a, full), (b, short)))
            feats[n] = np.concatenate([a, b.astype(a.dtype, copy=False)])[source]
    return Encoded(feats, offsets, full.labels)


def plan_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, shuffle: bool = True
                 ) -> list[np.ndarray]:
    """Row indices of each batch for one epoch: every row exactly once, ceil(n / batch) batches.

    Shuffled: rows are permuted with (seed, epoch), sorted by length within windows, cut into
    batches, and the batches permuted again. Not shuffled (evaluation): sorted by length overall.
    """
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    window = batch_size * SORT_WINDOW_BATCHES
    sorted_windows = [w[np.argsort(lengths[w], kind="stable")] for w in
                      (order[i:i + window] for i in range(0, n, window))]
    order = np.concatenate(sorted_windows)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def steps_per_epoch(n: int, global_batch: int) -> int:
    return math.ceil(n / global_batch)


def padded_width(longest: int, max_length: int, multiple: int) -> int:
    return min(max_length, int(math.ceil(max(longest, 1) / multiple) * multiple))


def pad_batch(enc: Encoded, idx: np.ndarray, max_length: int, pad_id: int = 0, multiple: int | None = None
              ) -> dict[str, np.ndarray]:
    """Rows `idx` padded to their longest, rounded up to `multiple` (None: pad_multiple())."""
    idx = np.asarray(idx)
    lengths = enc.lengths[idx]
    width = padded_width(int(lengths.max()) if len(idx) else 1, max_length,
                         pad_multiple() if multiple is None else multiple)
    # One gather for the whole batch: position j of row r reads flat[offsets[idx[r]] + j].
    mask = np.arange(width)[None, :] < lengths[:, None]
    source = (enc.offsets[idx][:, None] + np.arange(width)[None, :])[mask]
    out = {}
    for name, flat in enc.features.items():
        if isinstance(flat, int):  # the same value for every real token, 0 for padding
            out[name] = mask.astype(np.int32) * flat
            continue
        arr = np.full((len(idx), width), pad_id if name == "input_ids" else 0, dtype=np.int32)
        arr[mask] = flat[source]
        out[name] = arr
    return out


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray], max_length: int, multiple: int
                     ) -> tuple[int, int]:
    """(real tokens, computed tokens) of a batch plan: what padding costs in compute."""
    real = computed = 0
    for b in batches:
        ls = lengths[b]
        real += int(ls.sum())
        computed += len(b) * padded_width(int(ls.max()), max_length, multiple)
    return real, computed


@dataclass(frozen=True)
class Sharding:
    """Which part of each global batch this input pipeline (one per worker) produces."""

    replicas: int = 1  # replicas in sync, over all workers
    workers: int = 1
    worker_index: int = 0

    @property
    def local_replicas(self) -> int:
        return self.replicas // self.workers

    @classmethod
    def from_context(cls, ctx: tf.distribute.InputContext) -> "Sharding":
        return cls(ctx.num_replicas_in_sync, ctx.num_input_pipelines, ctx.input_pipeline_id)


def replica_batches(idx: np.ndarray, global_batch: int, shard: Sharding) -> list[tuple[np.ndarray, np.ndarray]]:
    """This worker's per-replica (rows, weights) of one global batch.

    Every worker computes the same global plan and takes its own contiguous slice, so all workers
    take the same number of steps and no row is seen twice per epoch. With several replicas a short
    last batch is filled to full size with repeated rows of weight 0: every replica must take every
    step, and weight-0 rows change neither the gradient nor the metrics.
    """
    weights = np.ones(len(idx), dtype=np.float32)
    if shard.replicas > 1 and len(idx) < global_batch:
        weights = np.concatenate([weights, np.zeros(global_batch - len(idx), dtype=np.float32)])
        idx = np.resize(idx, global_batch)
    if shard.replicas == 1:
        return [(idx, weights)]
    per_replica = global_batch // shard.replicas
    first = shard.worker_index * shard.local_replicas
    return [(idx[r * per_replica:(r + 1) * per_replica], weights[r * per_replica:(r + 1) * per_replica])
            for r in range(first, first + shard.local_replicas)]


def _signature(enc: Encoded):
    x = {n: tf.TensorSpec([None, None], tf.int32) for n in enc.names}
    y = tf.TensorSpec([None, *enc.labels.shape[1:]], tf.float32 if enc.labels.dtype.kind == "f" else tf.int32)
    return x, y, tf.TensorSpec([None], tf.float32)


def _dataset(enc: Encoded, batches, global_batch: int, max_length: int, pad_id: int, shard: Sharding,
             multiple: int | None):
    multiple = pad_multiple() if multiple is None else multiple

    def gen():
        for idx in batches():
            for rows, weights in replica_batches(idx, global_batch, shard):
                yield pad_batch(enc, rows, max_length, pad_id, multiple), enc.labels[rows], weights

    return _finish(tf.data.Dataset.from_generator(gen, output_signature=_signature(enc)))


def train_dataset(enc: Encoded, global_batch: int, epochs: int, seed: int, max_length: int,
                  pad_id: int = 0, initial_epoch: int = 0, skip: int = 0,
                  shard: Sharding = Sharding(), pad_multiple: int | None = None) -> tf.data.Dataset:
    """Per-replica (x, y, weight) batches of epochs initial_epoch.. in one stream, the first `skip`
    global batches left out (resume); fit() takes steps_per_epoch of them per epoch.
    `pad_multiple`: batch width granularity, None for features.pad_multiple()."""

    def batches():
        for epoch in range(initial_epoch, epochs):
            plan = plan_batches(enc.lengths, global_batch, seed, epoch)
            yield from plan[skip if epoch == initial_epoch else 0:]

    return _dataset(enc, batches, global_batch, max_length, pad_id, shard, pad_multiple)


def validation_dataset(enc: Encoded, global_batch: int, max_length: int, pad_id: int = 0,
                       shard: Sharding = Sharding(), pad_multiple: int | None = None) -> tf.data.Dataset:
    """Length-sorted per-replica batches of the whole split, for fit()'s per-epoch validation."""
    plan = plan_batches(enc.lengths, global_batch, 0, 0, shuffle=False)
    return _dataset(enc, lambda: iter(plan), global_batch, max_length, pad_id, shard, pad_multiple)


def eval_dataset(enc: Encoded, batch: int, max_length: int, pad_id: int = 0, pad_multiple: int | None = None
                 ) -> tuple[tf.data.Dataset, np.ndarray]:
    """Length-sorted batches (least padding) and the row order they come in; not distributed."""
    plan = plan_batches(enc.lengths, batch, 0, 0, shuffle=False)
    order = np.concatenate(plan) if plan else np.zeros(0, dtype=np.int64)
    return _dataset(enc, lambda: iter(plan), batch, max_length, pad_id, Sharding(), pad_multiple), order


# Batches held ready ahead of the train step. Fixed, with tf.data's autotuning off: with it on,
# destroying fit()'s input iterator at the end of training waited for the autotune thread (31-54 s
# between the last step and fit() returning on a 63-step MiniLM run, main thread seen in
# ~IteratorResource; 0.2 s without). The generator's batches are ready-made: two ahead suffice.
PREFETCH = 2


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    # Each pipeline already yields exactly its own batches: no file- or data-level auto-sharding.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(PREFETCH)
