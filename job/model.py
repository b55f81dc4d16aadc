"""Model: find a pretrained checkpoint, load its fast tokenizer and a classification model on top.

Checkpoints come as a hub id, a local folder or a gs:// folder, with TensorFlow (`tf_model.h5`)
or PyTorch-only safetensors weights. transformers 4.57's TF loader fails on PyTorch safetensors
(`'builtins.safe_open' object is not iterable`; `from_pt=True` wants torch), so those are read
with safetensors.numpy and converted with transformers' own PyTorch->TF name mapping.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from job import logs, storage
from job.config import ModelConfig
from job.errors import ConfigError, ModelError, TransientError

log = logging.getLogger(__name__)

TF_WEIGHTS = ("tf_model.h5", "tf_model.h5.index.json")
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
# Weights a pretrained backbone legitimately lacks: the new task head (names differ per architecture).
HEAD_PREFIXES = ("classifier", "pre_classifier", "score", "pooler", "bert.pooler", "logits_proj")
# Tokenizers report 1e30 when they do not know their limit.
_UNKNOWN_LIMIT = 1_000_000


def resolve_checkpoint(ref: str, scratch: Path) -> Path:
    """A local folder holding the checkpoint named by `ref` (downloaded when remote)."""
    if storage.is_gcs(ref):
        return storage.fetch_tree(ref, scratch / "model")
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelError(f"--model {ref} is not a folder: point it at a checkpoint folder with config.json")
        return path
    return _from_hub(ref, scratch)


def _from_hub(repo_id: str, scratch: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hub_errors

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(scratch / "hub"),
                                      allow_patterns=["*.json", "*.txt", "*.model", "tf_model.h5*",
                                                      "model*.safetensors*"]))
    except (hub_errors.RepositoryNotFoundError, hub_errors.HFValidationError) as exc:
        raise ModelError(f"--model {repo_id}: no such folder or hub model ({type(exc).__name__}); "
                         "check the name or give a local or gs:// folder") from None
    except Exception as exc:  # offline, hub down, rate limited
        raise TransientError(f"--model {repo_id}: could not download from the Hugging Face hub "
                             f"({type(exc).__name__}); retry, or give a local or gs:// folder") from None


def check_checkpoint(path: Path) -> str:
    """Which weights the folder holds: 'tf' or 'safetensors'; raise with the fix when unusable."""
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    for index in (path / "tf_model.h5.index.json", path / "model.safetensors.index.json"):
        if index.is_file():
            shard_files(path, index)  # refuse a bad index now, not after the data is read
    if any((path / n).is_file() for n in TF_WEIGHTS):
        return "tf"
    if any((path / n).is_file() for n in SAFETENSORS):
        return "safetensors"
    if any(path.glob("pytorch_model*.bin")):
        raise ModelError(f"{path} has only PyTorch .bin weights, which cannot be read without torch: "
                         "convert them to model.safetensors")
    raise ModelError(f"{path} has no weights (tf_model.h5 or model.safetensors)")


def load_tokenizer(path: Path, cfg: ModelConfig):
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:
        raise ModelError(f"cannot load a tokenizer from {path} ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{path} has no fast tokenizer (tokenizer.json); save one with a recent transformers")
    config = AutoConfig.from_pretrained(str(path))
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    limit = min(x for x in limits if x and x < _UNKNOWN_LIMIT) if any(
        x and x < _UNKNOWN_LIMIT for x in limits) else None
    if limit is not None and cfg.max_length != "auto" and cfg.max_length > limit:
        raise ConfigError(f"--max-length {cfg.max_length} exceeds this model's limit of {limit} tokens; "
                          f"use --max-length {limit} or less")
    return tokenizer


def length_limit(path: Path, tokenizer) -> int | None:
    """The model's longest input in tokens (position embeddings, tokenizer limit), None if unstated."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    limits = [x for x in (getattr(config, "max_position_embeddings", None), tokenizer.model_max_length)
              if x and x < _UNKNOWN_LIMIT]
    return min(limits) if limits else None


def load_classifier(path: Path, kind: str, label_names: tuple[str, ...], regression_mean: float | None = None):
    """The checkpoint with a freshly initialised head of len(label_names) classes.

    Call inside `strategy.scope()` so the variables are mirrored. `regression_mean` (regression):
    a new head's output bias starts at the training targets' mean, the best constant under MSE.
    """
    from transformers import AutoConfig, TFAutoModelForSequenceClassification

    id2label = dict(enumerate(label_names))
    config = AutoConfig.from_pretrained(str(path), num_labels=len(label_names), id2label=id2label,
                                        label2id={n: i for i, n in id2label.items()})
    try:
        # transformers' loading notices ("Some weights ... were not used / newly initialized", the TF
        # deprecation) are expected for a new head: DEBUG only; _log_loading says it in one line.
        with logs.demoted(_LOADING_LOGGERS, _LOADING_NOTICES):
            if kind == "tf":
                # use_safetensors=False: a published run's hf_model/ also holds a PyTorch model.safetensors,
                # which transformers 4.57's TF loader would prefer and fail on (see the module docstring).
                model, info = TFAutoModelForSequenceClassification.from_pretrained(
                    str(path), config=config, ignore_mismatched_sizes=True, output_loading_info=True,
                    use_safetensors=False)
            else:
                model, info = _from_pt_safetensors(path, config)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ModelError(f"{path}: this architecture ({config.model_type}) has no TensorFlow "
                             "sequence-classification model in transformers") from None
        raise ModelError(f"cannot load weights from {path} ({exc})".splitlines()[0]) from None
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot load weights from {path}: the files look corrupt ({type(exc).__name__}: "
                         f"{exc})".splitlines()[0]) from None
    except Exception as exc:
        if "safetensors" in type(exc).__module__ or "Safetensor" in type(exc).__name__:
            raise ModelError(f"cannot load weights from {path}: corrupt safetensors ({exc})") from None
        raise
    missing = [k for k in info.get("missing_keys", []) if not _is_head(k)]
    if missing:
        raise ModelError(f"{path}: {len(missing)} backbone weights missing from the checkpoint "
                         f"(e.g. {missing[0]}); it does not match its config.json")
    if _log_loading(info, len(label_names)) and regression_mean is not None:
        _start_output_at(model, regression_mean)
    return model


def _start_output_at(model, value: float) -> None:
    """Set a new regression head's output bias. A zero bias on targets of mean 2.7 (STS-B's 0-5)
    spends the first hundred steps learning that constant: measured on STS-B (MiniLM, 2,000 rows,
    2 epochs), validation Pearson 0.29 from zero, far higher from the mean (tests/test_quality_problems.py)."""
    biases = [w for w in model.weights if "bias" in w.name and tuple(w.shape) == (1,)]
    if len(biases) != 1:  # an architecture whose head we cannot tell apart: its own initialisation
        log.debug("regression head bias not found (%d candidates): left as initialised", len(biases))
        return
    biases[0].assign([float(value)])
    log.info("regression head: output bias starts at the training targets' mean %.4g", value)


_LOADING_LOGGERS = ("transformers.modeling_tf_utils", "transformers.modeling_tf_pytorch_utils")
_LOADING_NOTICES = (r"^(Some (weights|layers)|All (model checkpoint|PyTorch model|the) (layers|weights))|"
                    r"TensorFlow and JAX classes are deprecated")


def _log_loading(info: dict, num_labels: int) -> bool:
    """What transformers' loading notices said, in the job's words: the head in one INFO line.
    True when the head is new (not loaded from the checkpoint)."""
    def names(key: str) -> list[str]:  # mismatched_keys holds (name, shape, shape)
        return [str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get(key) or []]

    head = [k for k in names("missing_keys") + names("mismatched_keys") if _is_head(k)]
    reshaped_backbone = [k for k in names("mismatched_keys") if not _is_head(k)]
    if reshaped_backbone:
        log.warning("%d backbone weights newly initialised: their shapes differ from the checkpoint's (e.g. %s)",
                    len(reshaped_backbone), reshaped_backbone[0])
    if head:
        log.info("classification head newly initialised (%d labels)", num_labels)
    else:
        log.info("classification head loaded from the checkpoint (%d labels)", num_labels)
    if unused := names("unexpected_keys"):
        log.debug("%d checkpoint weights not used by the classifier (e.g. pretraining heads): %s", len(unused),
                  ", ".join(unused[:20]) + (" ..." if len(unused) > 20 else ""))
    return bool(head)


def _is_head(name: str) -> bool:
    base = name.split("/", 1)[-1] if "/" in name else name
    return any(base.startswith(p) or f"/{p}" in name or f".{p}" in name for p in HEAD_PREFIXES)


def shard_files(folder: Path, index: Path) -> list[Path]:
    """The weight shards a sharded checkpoint's index names, each a file directly in `folder`.

    The index is part of the (possibly downloaded, possibly hostile) checkpoint: a shard name such as
    `../x.safetensors` or `/etc/x` must never make the job read a file outside the model folder.
    """
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index} is not a shard index ({type(exc).__name__}): it needs a weight_map of "
                         "parameter -> shard file; re-save the checkpoint") from None
    shards = []
    for name in names:
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ModelError(f"{index} names shard {name!r}, which is not a file in the model folder; "
                             "shards must sit beside the index")
        shard = folder / name
        if not shard.is_file():
            raise ModelError(f"{index} names shard {name}, which is missing from {folder}")
        shards.append(shard)
    return shards


def _from_pt_safetensors(path: Path, config):
    from safetensors.numpy import load_file
    from transformers import TFAutoModelForSequenceClassification
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    index = path / "model.safetensors.index.json"
    shards = shard_files(path, index) if index.is_file() else [path / "model.safetensors"]
    state: dict = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    model = TFAutoModelForSequenceClassification.from_config(config)
    model, info = load_pytorch_state_dict_in_tf2_model(model, state, allow_missing_keys=True,
                                                       output_loading_info=True,
                                                       ignore_mismatched_sizes=True)
    return model, info
