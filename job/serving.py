"""Serving: the checkpoint's tokenizer rebuilt in the TensorFlow graph (tensorflow-text), so the
SavedModel takes raw text, and the check that it gives the Hugging Face fast tokenizer's ids.

    tok = serving.graph_tokenizer(hf_tokenizer, max_length=128)   # a GraphTokenizer or Unsupported
    report = serving.parity(hf_tokenizer, tok, texts, pairs, max_length=128)

The graph follows the fast tokenizer's own recipe, read from its tokenizer.json (normalizer,
pre-tokenizer, model, post-processor), one tf op per step, rather than tensorflow-text's
BertTokenizer, whose basic tokenizer differs from Hugging Face's (it case-folds with NFKC instead of
lower-casing, and counts a word's length in bytes, not characters). Supported:

- WordPiece with BertNormalizer + BertPreTokenizer (BERT, MiniLM, DistilBERT, ELECTRA, ...);
- Unigram SentencePiece whose normalizer is the model's own charsmap (XLM-RoBERTa-style), where the
  checkpoint ships the `.model` file: tensorflow-text runs that file.

Anything else (byte-level BPE, custom normalizers) is `Unsupported(reason)`; the export then keeps
only the token-id signature. Whatever is supported is still only published after `parity` finds
every sampled validation row identical.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

# Rows tokenized both ways at export; all of them when the validation split is smaller.
PARITY_ROWS = 2000
# Differing rows kept in metrics.json for a reader to see what went wrong.
PARITY_EXAMPLES = 3

# Rust's char::is_whitespace (the White_Space property), which BertNormalizer and BertPreTokenizer use;
# RE2's \s is ASCII only. U+0085, U+000B and U+000C are also Cc (control) and removed before this applies.
_WHITESPACE = r"\t\n\x{0B}\x{0C}\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"
# BertPreTokenizer's punctuation: ASCII punctuation (incl. $+<=>^`|~, Unicode symbols) or category P.
_PUNCTUATION = r"!-/:-@\[-`{-~\p{P}"
# BertNormalizer's "Chinese characters" (CJK ideograph blocks; not kana or hangul), padded with spaces.
_CJK = (r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
        r"\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}")
_SPM_SPACE = "\u2581"


@dataclasses.dataclass(frozen=True)
class Unsupported:
    reason: str


def _tf_text():
    import tensorflow_text

    return tensorflow_text


def _spec(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _template(spec: dict) -> tuple[list, list] | str:
    """(single, pair) post-processing templates as lists of ("A"|"B"|token id, type id), or a reason."""
    post = spec.get("post_processor") or {}
    kind = post.get("type")
    if kind == "TemplateProcessing":
        specials = post["special_tokens"]

        def parts(template):
            out = []
            for piece in template:
                if "Sequence" in piece:
                    out.append((piece["Sequence"]["id"], piece["Sequence"]["type_id"]))
                else:
                    sp = piece["SpecialToken"]
                    out += [(int(i), sp["type_id"]) for i in specials[sp["id"]]["ids"]]
            return out

        return parts(post["single"]), parts(post["pair"])
    if kind == "BertProcessing":
        (_, cls), (_, sep) = post["cls"], post["sep"]
        return [(cls, 0), ("A", 0), (sep, 0)], [(cls, 0), ("A", 0), (sep, 0), ("B", 1), (sep, 1)]
    if kind == "RobertaProcessing":
        (_, cls), (_, sep) = post["cls"], post["sep"]
        return [(cls, 0), ("A", 0), (sep, 0)], [(cls, 0), ("A", 0), (sep, 0), (sep, 0), ("B", 0), (sep, 0)]
    return f"post-processor {kind} is not reproduced in the graph"


def graph_tokenizer(tokenizer, max_length: int):
    """A GraphTokenizer reproducing `tokenizer` (a transformers fast tokenizer), or Unsupported(reason)."""
    try:
        _tf_text()
    except ImportError as exc:  # the image installs it; a bare environment may not
        return Unsupported(f"tensorflow-text is not installed ({exc})")
    spec = _spec(tokenizer)
    model = spec.get("model") or {}
    if model.get("type") not in ("WordPiece", "Unigram"):
        return Unsupported(f"{model.get('type')} tokenizers (e.g. byte-level BPE) are not reproduced by tensorflow-text")
    template = _template(spec)
    if isinstance(template, str):
        return Unsupported(template)
    if tokenizer.padding_side != "right" or tokenizer.truncation_side != "right":
        return Unsupported("only right-side padding and truncation are reproduced in the graph")
    if model.get("type") == "WordPiece":
        norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
        if norm.get("type") != "BertNormalizer" or pre.get("type") != "BertPreTokenizer":
            return Unsupported(f"WordPiece with normalizer {norm.get('type')} and pre-tokenizer {pre.get('type')}: "
                               "only BertNormalizer + BertPreTokenizer are reproduced in the graph")
        return GraphTokenizer(WordPieceSteps(spec, tokenizer.get_vocab()), template, max_length,
                              tokenizer.pad_token_id or 0, spec.get("added_tokens") or ())
    if model.get("type") == "Unigram":
        model_file = Path(getattr(tokenizer, "vocab_file", None) or "")
        if not model_file.is_file() or model_file.suffix != ".model":
            return Unsupported("a SentencePiece (Unigram) tokenizer without its .model file in the checkpoint")
        kinds = SentencePieceSteps.normalizer_steps(spec)
        if isinstance(kinds, str):
            return Unsupported(kinds)
        return GraphTokenizer(SentencePieceSteps(model_file.read_bytes(), tokenizer, kinds), template, max_length,
                              tokenizer.pad_token_id or 0, spec.get("added_tokens") or ())
    return Unsupported(f"{model.get('type')} tokenizers (e.g. byte-level BPE) are not reproduced by tensorflow-text")


class WordPieceSteps(tf.Module):
    """BertNormalizer -> BertPreTokenizer -> WordPiece, as tokenizers (Rust) does them."""

    def __init__(self, spec: dict, vocab: dict[str, int]):
        super().__init__()
        norm, model = spec["normalizer"], spec["model"]
        self.clean_text = bool(norm.get("clean_text", True))
        self.cjk = bool(norm.get("handle_chinese_chars", True))
        self.lowercase = bool(norm.get("lowercase", True))
        strip = norm.get("strip_accents")
        self.strip_accents = self.lowercase if strip is None else bool(strip)  # BERT's rule: None follows lowercase
        self.unk = model["unk_token"]
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        tokens = sorted(vocab, key=vocab.get)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(tokens), tf.constant([vocab[t] for t in tokens], tf.int64)),
            default_value=-1)
        self.wordpiece = _tf_text().WordpieceTokenizer(
            self.table, suffix_indicator=model.get("continuing_subword_prefix", "##"),
            max_bytes_per_word=1 << 30, token_out_type=tf.int64, unknown_token=self.unk)

    def normalize(self, text: tf.Tensor) -> tf.Tensor:
        if self.clean_text:
            # Tab/LF/CR are whitespace, every other "other" char (Cc Cf Co Cs) and U+FFFD is dropped,
            # then all whitespace becomes a space: the order of tokenizers' clean_text.
            text = tf.strings.regex_replace(text, r"[\t\n\r]", " ")
            text = tf.strings.regex_replace(text, r"[\x{FFFD}\p{C}]", "")
            text = tf.strings.regex_replace(text, f"[{_WHITESPACE}]", " ")
        if self.cjk:
            text = tf.strings.regex_replace(text, f"([{_CJK}])", r" \1 ")
        if self.strip_accents:
            # Nonspacing marks (Mn) only: spacing marks such as Devanagari vowel signs (Mc) stay.
            text = tf.strings.regex_replace(_tf_text().normalize_utf8(text, "NFD"), r"\p{Mn}", "")
        if self.lowercase:
            # Full Unicode lowercase per character, as Rust's char::to_lowercase: ICU would give a
            # word-final capital sigma the final form (ς), tokenizers always gives σ.
            text = tf.strings.lower(tf.strings.regex_replace(text, "\u03a3", "\u03c3"), encoding="utf-8")
        return text

    def __call__(self, text: tf.Tensor) -> tf.RaggedTensor:
        """[batch] strings -> [batch, (tokens)] int64 ids, no special tokens."""
        words = _tf_text().regex_split(self.normalize(text), f"[{_WHITESPACE}]+|[{_PUNCTUATION}]", f"[{_PUNCTUATION}]")
        # WordPiece gives a word longer than max_input_chars_per_word *characters* the unknown token.
        too_long = tf.strings.length(words, unit="UTF8_CHAR") > self.max_chars
        words = tf.ragged.map_flat_values(lambda w, t: tf.where(t, self.unk, w), words, too_long)
        ids = self.wordpiece.tokenize(words)  # [batch, words, pieces]
        return ids.merge_dims(1, 2)


class SentencePieceSteps(tf.Module):
    """The checkpoint's SentencePiece model run by tensorflow-text, piece ids mapped to the HF vocab."""

    @staticmethod
    def normalizer_steps(spec: dict) -> list[str] | str:
        """The normalizer's step kinds when the model's own normalizer covers them, else a reason."""
        norm = spec.get("normalizer") or {}
        steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
        kinds = [s.get("type") for s in steps]
        # SentencePiece's remove_extra_whitespaces does what these do: strip, then collapse spaces.
        ok = kinds and kinds[0] == "Precompiled" and all(
            (s.get("type") == "Strip" and not s.get("strip_left") and s.get("strip_right"))
            or (s.get("type") == "Replace" and s.get("pattern") == {"Regex": " {2,}"}
                and s.get("content") in (" ", _SPM_SPACE)) for s in steps[1:])
        if not ok:
            return (f"SentencePiece normalizer {kinds}: only the model's own charsmap (+ stripping and space "
                    "collapsing) is reproduced in the graph")
        pre = spec.get("pre_tokenizer") or {}
        if pre.get("type") != "Metaspace" or pre.get("prepend_scheme", "always") != "always":
            return f"SentencePiece pre-tokenizer {pre.get('type')} {pre.get('prepend_scheme')} is not reproduced"
        return kinds

    def __init__(self, model: bytes, tokenizer, kinds: list[str]):
        super().__init__()
        self.sp = _tf_text().SentencepieceTokenizer(model=model, out_type=tf.int32)
        import sentencepiece

        proc = sentencepiece.SentencePieceProcessor(model_proto=model)
        vocab = tokenizer.get_vocab()
        # The id the Rust Unigram model gives unknown pieces (get_vocab may name a second "<unk>").
        unk = int(spec_unk) if (spec_unk := _spec(tokenizer)["model"].get("unk_id")) is not None else tokenizer.unk_token_id
        # Fairseq-style checkpoints (XLM-R) shift SentencePiece ids; map every piece by its string.
        mapping = [vocab.get(proc.id_to_piece(i), unk) for i in range(proc.get_piece_size())]
        mapping[proc.unk_id()] = unk
        self.mapping = tf.constant(mapping, tf.int64)
        # Without a right Strip (tokenizer.json from older transformers), trailing whitespace is one "▁".
        self.trailing_space = "Strip" not in kinds
        self.space_id = tf.constant(vocab.get(_SPM_SPACE, unk), tf.int64)

    def __call__(self, text: tf.Tensor) -> tf.RaggedTensor:
        ids = tf.ragged.map_flat_values(lambda x: tf.gather(self.mapping, x), self.sp.tokenize(text))
        if not self.trailing_space:
            return ids
        trailing = tf.strings.regex_full_match(text, f".*[{_WHITESPACE}]")
        extra = tf.ragged.boolean_mask(tf.fill(tf.shape(text), self.space_id)[:, None], trailing[:, None])
        return tf.concat([ids, extra], axis=1)


class GraphTokenizer(tf.Module):
    """Tokenize, truncate (longest_first), add special tokens, pad: [batch] strings -> int32 model inputs."""

    def __init__(self, steps, template: tuple[list, list], max_length: int, pad_id: int,
                 added_tokens: Sequence[dict] = ()):
        super().__init__()
        self.steps = steps
        self.single, self.pair = template
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        # Added tokens ([CLS], <mask>, ...) typed in a text are one token each, found in the raw text
        # before anything else runs, as tokenizers does; lstrip/rstrip ones take the whitespace beside them.
        tokens = sorted((t for t in added_tokens if t.get("content")), key=lambda t: -len(t["content"]))
        self.added_pattern = "|".join(
            (f"[{_WHITESPACE}]*" if t.get("lstrip") else "") + _re2_escape(t["content"])
            + (f"[{_WHITESPACE}]*" if t.get("rstrip") else "") for t in tokens) or None
        if self.added_pattern:
            self.added = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant([t["content"] for t in tokens]), tf.constant([int(t["id"]) for t in tokens], tf.int64)),
                default_value=-1)

    def encode(self, text: tf.Tensor) -> tf.RaggedTensor:
        """[batch] strings -> [batch, (ids)] without special tokens or truncation."""
        if self.added_pattern is None:
            return self.steps(text)
        # Only rows holding an added token are split around it (the others get "" there, and the
        # split rows "" here): regex_split cuts a piece at a NUL byte, so in those rows NUL becomes
        # U+FFFD, which BertNormalizer drops just as it drops NUL.
        has_added = tf.strings.regex_full_match(text, f"(?s).*(?:{self.added_pattern}).*")
        direct = self.steps(tf.where(has_added, "", text))
        split = self._split(tf.where(has_added, tf.strings.regex_replace(text, r"\x00", "\ufffd"), ""))
        return tf.concat([direct, split], axis=1)

    def _split(self, text: tf.Tensor) -> tf.RaggedTensor:
        pieces = _tf_text().regex_split(text, self.added_pattern, self.added_pattern)  # [batch, (pieces)]
        flat = pieces.flat_values
        added_id = self.added.lookup(tf.strings.regex_replace(flat, f"^[{_WHITESPACE}]+|[{_WHITESPACE}]+$", ""))
        is_added = added_id >= 0
        # An added token's piece tokenizes as "" (no ids) and gets its one id appended: cheap row-wise ops.
        ids = self.steps(tf.where(is_added, "", flat))  # [pieces, (ids)]
        one = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(added_id, is_added), tf.cast(is_added, tf.int64),
                                               validate=False)
        ids = tf.concat([ids, one], axis=1)
        return tf.RaggedTensor.from_row_splits(ids, pieces.row_splits, validate=False).merge_dims(1, 2)

    def __call__(self, text: tf.Tensor, text_pair: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        text = _valid_utf8(text)
        a = self.encode(text)
        if text_pair is None:
            template = self.single
            budget = max(self.max_length - sum(1 for p, _ in template if p not in ("A", "B")), 0)
            segments = {"A": a[:, :budget]}
        else:
            template = self.pair
            b = self.encode(_valid_utf8(text_pair))
            budget = max(self.max_length - sum(1 for p, _ in template if p not in ("A", "B")), 0)
            n1, n2 = _longest_first(a.row_lengths(), b.row_lengths(), budget)
            segments = {"A": _truncate(a, n1), "B": _truncate(b, n2)}
        batch = tf.shape(text, out_type=tf.int64)[0]
        ids, types = [], []
        for piece, type_id in template:
            seg = segments[piece] if piece in ("A", "B") else tf.RaggedTensor.from_tensor(
                tf.fill([batch, 1], tf.constant(piece, tf.int64)))
            ids.append(seg)
            types.append(tf.ones_like(seg) * type_id)
        ids, types = tf.concat(ids, axis=1), tf.concat(types, axis=1)
        return {"input_ids": tf.cast(ids.to_tensor(self.pad_id), tf.int32),
                "attention_mask": tf.cast(tf.ones_like(ids).to_tensor(0), tf.int32),
                "token_type_ids": tf.cast(types.to_tensor(0), tf.int32)}


def _re2_escape(literal: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "\\" + c if c.isascii() else c for c in literal)


def _valid_utf8(text: tf.Tensor) -> tf.Tensor:
    # Invalid bytes become U+FFFD (which BertNormalizer drops), as Python's errors="replace" would.
    return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)


def _longest_first(l1: tf.Tensor, l2: tf.Tensor, budget: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-row kept lengths of a pair under tokenizers' LongestFirst truncation (truncate_encodings):
    the shorter side keeps all it can, the longer the rest; when both exceed half, the first gets the
    floor of half and the second the ceiling (ties: the first counts as the shorter)."""
    swap = l1 > l2
    short, long_ = tf.minimum(l1, l2), tf.maximum(l1, l2)
    del long_  # tokenizers sets the longer side's limit from the shorter one only
    n_long = tf.where(short > budget, short, tf.maximum(short, budget - short))
    over = short + n_long > budget
    n_short = tf.where(over, tf.constant(budget // 2, tf.int64), short)
    n_long = tf.where(over, tf.constant(budget // 2 + budget % 2, tf.int64), n_long)
    return tf.where(swap, n_long, n_short), tf.where(swap, n_short, n_long)


def _truncate(rt: tf.RaggedTensor, keep: tf.Tensor) -> tf.RaggedTensor:
    positions = tf.ragged.range(rt.row_lengths())
    return tf.ragged.boolean_mask(rt, positions < tf.expand_dims(keep, 1))


# --------------------------------------------------------------------------------------------
# Parity with the Hugging Face tokenizer

def hf_encode(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> list[tuple]:
    enc = tokenizer(list(texts), *([list(pairs)] if pairs is not None else []), truncation=True,
                    max_length=max_length, return_token_type_ids=True)
    return list(zip(enc["input_ids"], enc["token_type_ids"]))


def graph_encode(graph: GraphTokenizer, texts: Sequence[str], pairs: Sequence[str] | None,
                 batch: int = 256) -> list[tuple]:
    out = []
    for i in range(0, len(texts), batch):
        args = [tf.constant(list(texts[i:i + batch]), tf.string)]
        if pairs is not None:
            args.append(tf.constant(list(pairs[i:i + batch]), tf.string))
        enc = {k: v.numpy() for k, v in graph(*args).items()}
        for ids, mask, types in zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]):
            n = int(mask.sum())
            out.append((ids[:n].tolist(), types[:n].tolist()))
    return out


def parity(tokenizer, graph: GraphTokenizer, texts: Sequence[str], pairs: Sequence[str] | None,
           max_length: int, limit: int = PARITY_ROWS) -> dict:
    """Share of rows (the first `limit`) whose ids and type ids are identical both ways, and the first
    rows that differ (text, both id lists)."""
    texts = list(texts[:limit])
    pairs = list(pairs[:limit]) if pairs is not None else None
    if not texts:
        return {"rows": 0, "identical": 0, "share": 1.0, "differences": []}
    want, got = hf_encode(tokenizer, texts, pairs, max_length), graph_encode(graph, texts, pairs)
    diffs = []
    same = 0
    for i, (w, g) in enumerate(zip(want, got)):
        if (list(w[0]), list(w[1])) == (g[0], g[1]):
            same += 1
        elif len(diffs) < PARITY_EXAMPLES:
            diffs.append({"row": i, "text": texts[i][:300], **({"text_pair": pairs[i][:300]} if pairs else {}),
                          "hf_ids": list(w[0])[:64], "graph_ids": g[0][:64]})
    return {"rows": len(texts), "identical": same, "share": round(same / len(texts), 6), "differences": diffs}


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0
