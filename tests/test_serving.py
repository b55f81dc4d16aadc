"""job.serving + job.export's text signatures: the in-graph tokenizer gives the Hugging Face fast
tokenizer's ids on hard texts (uncased and cased WordPiece, a SentencePiece model trained here), the
export refuses what it cannot prove, and the SavedModel serves raw text in a process that imports
only tensorflow and tensorflow_text."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from job import export, serving

MAX_LENGTHS = (24, 128)


def hard_texts() -> list[str]:
    return [
        "Hello WORLD, MiXeD CaSe", "Café naïve résumé Ångström", "e\u0301le\u0300ve (combining marks)",
        "中文分词测试，你好！", "日本語のテキストとカタカナ", "한국어 텍스트", "ภาษาไทยไม่มีช่องว่าง", "हिन्दी का पाठ",
        "emoji 😀👍🏽 family 👨\u200d👩\u200d👧\u200d👦 flag 🇫🇷", "ctrl\x00a\x01b\x7fc\u200bd\u200de\ufeff end",
        "line\u0085next\u2028sep\u2029para", "tabs\tand\nnewlines\r\n  runs     of   spaces",
        "x" * 150, "a" + "é" * 99, "a" * 100, "b" * 101, "word " * 300, "", " ", "   \t\n ",
        "İstanbul ΣΑΣ straße ǅ", "$100 + <tag> ^_^ `code` |pipe| ~x~", "«quotes» „de“ ‹x› — – … ¿qué? ¡sí!",
        "\ufffd replacement", "math ∑∫√ ≤ ≥ ℕ", "full-width ＡＢＣ１２３", "Ελληνικά Кириллица עברית العربية",
        "mixed123numbers456", "U.S.A. e.g. don't", "\u00a0nbsp\u3000ideographic\u202fnarrow", "trailing space ",
        " leading space", "😀" * 60, "ﬁ ligature ﬀ", "Ⅻ roman ① circled",
        "typed special tokens: [SEP] a[CLS]b [MASK]. and <s>x</s> <mask> <pad>",
    ]


def pairs_for(texts: list[str]) -> list[str]:
    # Very unequal lengths: each text meets another one repeated 1..37 times.
    return [texts[(i * 7 + 3) % len(texts)] * (1 + (i % 5) * 9) for i in range(len(texts))]


def assert_identical(tokenizer, texts, pairs=None, known=()):
    for max_length in MAX_LENGTHS:
        graph = serving.graph_tokenizer(tokenizer, max_length)
        assert isinstance(graph, serving.GraphTokenizer), graph
        want = serving.hf_encode(tokenizer, texts, pairs, max_length)
        got = serving.graph_encode(graph, texts, pairs)
        bad = [(texts[i], w[0], g[0]) for i, (w, g) in enumerate(zip(want, got))
               if (list(w[0]), list(w[1])) != tuple(g) and texts[i] not in known]
        assert not bad, f"max_length {max_length}: {bad[:3]}"
        assert max(len(g[0]) for g in got) == max_length, "some text must reach the length limit"


@pytest.fixture(scope="module")
def uncased():
    from transformers import AutoTokenizer

    from demo.__main__ import packaged_model

    return AutoTokenizer.from_pretrained(str(packaged_model()))  # a real BERT uncased vocabulary (MiniLM)


@pytest.fixture(scope="module")
def cased(tmp_path_factory):
    from transformers import BertTokenizerFast

    # Every character of the corpus in both cases and forms, alone and as a continuation, and a few
    # words: a normalisation or splitting difference shows up as different ids.
    chars = sorted({c for t in hard_texts() for form in (t, t.lower(), t.upper(), unicodedata.normalize("NFD", t))
                    for c in form if not c.isspace()})
    words = ["Hello", "WORLD", "Café", "word", "space", "##s", "##ing"]
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars,
                                *(f"##{c}" for c in chars)]))
    folder = tmp_path_factory.mktemp("cased")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=False, model_max_length=512)


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizerFast

    corpus = [t for t in hard_texts() if t.strip()] * 3 + ["the quick brown fox jumps over the lazy dog"] * 5
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=300,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                   bos_id=0, pad_id=1, eos_id=2, unk_id=3, minloglevel=2,
                                   num_threads=1)
    folder = tmp_path_factory.mktemp("spm")
    (folder / "sp.model").write_bytes(buf.getvalue())
    return XLMRobertaTokenizerFast(vocab_file=str(folder / "sp.model"), model_max_length=512)


def test_uncased_wordpiece_gives_the_hf_ids_on_hard_texts(uncased):
    texts = hard_texts()
    assert_identical(uncased, texts)
    assert_identical(uncased, texts, pairs_for(texts))


def test_cased_wordpiece_gives_the_hf_ids_on_hard_texts(cased):
    texts = hard_texts()
    assert_identical(cased, texts)
    assert_identical(cased, texts, pairs_for(texts))
    # The cased vocabulary keeps case and accents: "Café" is one token, not "cafe".
    graph = serving.graph_tokenizer(cased, 16)
    assert serving.graph_encode(graph, ["Café"], None)[0][0] == cased("Café")["input_ids"]


def test_sentencepiece_gives_the_hf_ids_except_on_viterbi_ties(sentencepiece_tokenizer):
    """tensorflow-text's SentencePiece breaks Unigram ties (different pieces of the same total score,
    common in runs of one repeated character) unlike tokenizers (README, "Serving"): every other
    text gives identical ids, and every differing text is such a tie."""
    import sentencepiece as spm

    tok, texts = sentencepiece_tokenizer, hard_texts()
    sp = spm.SentencePieceProcessor(model_file=tok.vocab_file)

    def score(ids):
        return sum(sp.get_score(sp.piece_to_id(p)) for p in tok.convert_ids_to_tokens(ids[1:-1]))

    whole = serving.graph_tokenizer(tok, 1 << 20)  # nothing truncated: a difference shows whole

    def differs(text: str) -> bool:
        """Whether the whole text segments differently; if so it must be a tie, never another text."""
        w, g = serving.hf_encode(tok, [text], None, 1 << 20)[0][0], serving.graph_encode(whole, [text], None)[0][0]
        if list(w) == g:
            return False
        assert tok.decode(w) == tok.decode(g) and score(w) == pytest.approx(score(g), abs=1e-4), text
        return True

    ties = {t for t in texts if differs(t)}
    # Truncated and paired, a row differs only where one of its texts is such a tie.
    pairs = pairs_for(texts)
    for max_length in (*MAX_LENGTHS, 512):
        g = serving.graph_tokenizer(tok, max_length)
        for p in (None, pairs):
            want, got = serving.hf_encode(tok, texts, p, max_length), serving.graph_encode(g, texts, p)
            for i, (w, gg) in enumerate(zip(want, got)):
                if (list(w[0]), list(w[1])) != tuple(gg):
                    assert texts[i] in ties or (p is not None and differs(p[i])), (max_length, texts[i][:30])
                    ties.add(texts[i] if texts[i] in ties else p[i])
    print(f"SentencePiece Viterbi ties: {len(ties)} texts: {sorted(t[:20] for t in ties)}")
    assert len(ties) < len(texts) / 4
    rest = [t for t in texts if t not in ties]
    check = serving.parity(tok, g, rest + sorted(ties), None, 512)
    assert check["identical"] >= len(rest) and {d["text"] for d in check["differences"]} <= {t[:300] for t in ties}


def test_unsupported_and_differing_tokenizers_get_token_id_signatures_only(sentencepiece_tokenizer):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(hard_texts() * 2, vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>")
    got = serving.graph_tokenizer(fast, 32)
    assert isinstance(got, serving.Unsupported) and "BPE" in got.reason
    # A text that the SentencePiece test shows tied (differently segmented) makes the check refuse.
    texts = hard_texts()
    whole = serving.graph_tokenizer(sentencepiece_tokenizer, 512)
    tied = [t for t, w, g in zip(texts, serving.hf_encode(sentencepiece_tokenizer, texts, None, 512),
                                 serving.graph_encode(whole, texts, None)) if list(w[0]) != g[0]]
    assert tied, "the SentencePiece model must show a tie for this test"
    graph, record = export.text_serving(sentencepiece_tokenizer, 512, ["fine text", tied[0]], None)
    assert graph is None and record["text_signatures"] is False
    assert record["parity"] == {**record["parity"], "rows": 2, "identical": 1, "share": 0.5}
    assert "differs from the Hugging Face tokenizer on 1 of 2 validation rows" in record["reason"]


# --------------------------------------------------------------------------------------------
# The exported SavedModel

LABELS = ("neg", "pos")


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    import tensorflow as tf

    from job import model as model_step
    from job.config import ModelConfig

    ckpt = tiny_checkpoints["tf"]
    tf.keras.utils.set_random_seed(3)
    tok = model_step.load_tokenizer(ckpt, ModelConfig(max_length=32))
    clf = model_step.load_classifier(ckpt, "tf", LABELS)
    clf(clf.dummy_inputs)
    texts = ["The film was wonderful.", "Dull and slow.", "", "A clever, funny cast!" * 9] + hard_texts()
    staging = tmp_path_factory.mktemp("staging")
    layout = export.export_all(clf, tok, ("input_ids", "attention_mask", "token_type_ids"), staging, 32, texts)
    return staging, layout, tok, texts


def test_export_publishes_text_signatures_with_parity_and_serving_layout(exported):
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    staging, layout, tok, texts = exported
    assert layout["text_signatures"] is True and layout["parity"]["rows"] == len(texts) == layout["parity"]["identical"]
    assert layout["signatures"] == ["classify", "serve_token_ids", "serving_default"]
    assert layout["prediction_max_abs_difference"] <= 1e-5
    version = staging / "serving" / "1"
    assert (version / "saved_model.pb").read_bytes() == (staging / "saved_model" / "saved_model.pb").read_bytes()
    sm = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    sigs = sm.meta_graphs[0].signature_def
    assert sigs["classify"].method_name == "tensorflow/serving/classify"
    assert set(sigs["classify"].inputs) == {"inputs"} and set(sigs["classify"].outputs) == {"classes", "scores"}
    assert set(sigs["serving_default"].outputs) == {"probabilities", "logits", "label", "label_id"}
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(str(version / export.WARMUP))]
    request = records[0].predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert [t.decode() for t in tf.make_ndarray(request.inputs["text"])] == texts[:3]


def test_text_and_id_predictions_that_differ_fall_back_to_token_id_signatures(tiny_checkpoints, tmp_path,
                                                                               monkeypatch):
    """Identical ids are not enough: when the text signature's predictions differ from the id
    signature's by more than the tolerance, only token-id signatures are written, with the reason."""
    from tensorflow.core.protobuf import saved_model_pb2

    from job import model as model_step
    from job.config import ModelConfig

    ckpt = tiny_checkpoints["tf"]
    tok = model_step.load_tokenizer(ckpt, ModelConfig(max_length=32))
    clf = model_step.load_classifier(ckpt, "tf", LABELS)
    monkeypatch.setattr(export, "PREDICTION_TOLERANCE", -1.0)  # any gap, even 0, is too large
    layout = export.export_all(clf, tok, ("input_ids", "attention_mask", "token_type_ids"), tmp_path, 32,
                               ["The film was wonderful.", "Dull and slow."])
    assert layout["text_signatures"] is False and layout["parity"]["share"] == 1.0
    assert layout["reason"].startswith("text and token-id predictions differ by")
    assert layout["signatures"] == ["serve_token_ids", "serving_default"]
    sm = saved_model_pb2.SavedModel.FromString((tmp_path / "saved_model" / "saved_model.pb").read_bytes())
    sigs = sm.meta_graphs[0].signature_def
    assert set(sigs) >= {"serve_token_ids", "serving_default"} and "classify" not in sigs
    assert set(sigs["serving_default"].inputs) == {"input_ids", "attention_mask", "token_type_ids"}


FRESH = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    model = tf.saved_model.load(sys.argv[1])
    serve, classify = model.signatures["serving_default"], model.signatures["classify"]
    texts = json.loads(sys.argv[2])
    out = serve(text=tf.constant(texts))
    result = {k: v.numpy().tolist() for k, v in out.items() if k != "label"}
    result["label"] = [x.decode() for x in out["label"].numpy()]
    bad = {}
    for name, value in (("empty", b""), ("1MB", b"word " * 200_000), ("invalid_utf8", b"\\xff\\xfe ok \\xc3")):
        try:
            bad[name] = serve(text=tf.constant([value]))["label"].numpy()[0].decode()
        except tf.errors.InvalidArgumentError as exc:
            bad[name] = "error: " + exc.message.splitlines()[0]
    example = tf.train.Example(features=tf.train.Features(feature={
        "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[texts[0].encode()]))}))
    c = classify(inputs=tf.constant([example.SerializeToString()]))
    result["classify"] = {"classes": [x.decode() for x in c["classes"].numpy()[0]], "scores": c["scores"].numpy()[0].tolist()}
    result["bad"] = bad
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "job", "torch"))
    print(json.dumps(result))
""")


def test_fresh_process_serves_raw_text_and_survives_bad_inputs(exported):
    import tensorflow as tf

    staging, _, tok, texts = exported
    proc = subprocess.run([sys.executable, "-c", FRESH, str(staging / "serving" / "1"), json.dumps(texts[:4])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["modules"] == []
    # Same predictions as the token-id signature fed by the Hugging Face tokenizer.
    ids = tf.saved_model.load(str(staging / "saved_model")).signatures["serve_token_ids"]
    enc = tok(texts[:4], truncation=True, max_length=32, padding=True, return_tensors="np")
    want = ids(**{k: tf.constant(v, tf.int32) for k, v in enc.items()})
    np.testing.assert_allclose(got["probabilities"], want["probabilities"].numpy(), atol=1e-5)
    assert got["label"] == [LABELS[i] for i in want["label_id"].numpy()] and got["label_id"] == want["label_id"].numpy().tolist()
    assert got["classify"]["classes"] == list(LABELS)
    np.testing.assert_allclose(got["classify"]["scores"], got["probabilities"][0], atol=1e-6)
    # Empty text is special tokens only, a 1 MB text is truncated, invalid bytes are replaced: all predict.
    assert set(got["bad"]) == {"empty", "1MB", "invalid_utf8"} and all(v in LABELS for v in got["bad"].values())
    empty = ids(**{k: tf.constant(v, tf.int32) for k, v in tok([""], return_tensors="np").items()})
    assert got["bad"]["empty"] == LABELS[int(empty["label_id"].numpy()[0])]


def test_predict_uses_the_text_signature_at_the_runs_max_length(exported):
    import dataclasses

    from job import predict

    staging, layout, _, texts = exported
    (staging / "metrics.json").write_text(json.dumps({"outputs": layout}))
    predictor = predict.load_predictor(staging)  # no max length given: the run's own (32)
    assert predictor.kind == "saved_model_text" and predictor.max_length == 32
    via_text = predict.predict_with(predictor, texts, None, batch_size=8, max_length=32)
    via_ids = predict.predict_with(dataclasses.replace(predictor, text_probabilities=None), texts, None, 8, 32)
    np.testing.assert_allclose(via_text, via_ids, atol=1e-5)
    # Another length than the run's: the ids path, which truncates to what was asked.
    assert predict.load_predictor(staging, 16).kind == "saved_model"


# -- the PyTorch-format copy, loaded by transformers on CPU torch in its own venv (built once, cached
# under work/, like bench/'s: torch beside TensorFlow here would segfault)
TORCH_VENV = ROOT / "work" / "venv-torch"
TORCH_REQUIREMENTS = ("torch==2.13.0", "transformers==4.57.6", "safetensors", "numpy")

TORCH_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**enc).logits
    print(json.dumps({"logits": logits.tolist(), "info": {k: list(map(str, v)) for k, v in info.items()}}))
""")


def torch_python() -> Path | None:
    python = TORCH_VENV / "bin" / "python"
    marker = TORCH_VENV / ".installed"
    if marker.is_file() and marker.read_text().split() == list(TORCH_REQUIREMENTS):
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    made = subprocess.run([base, "-m", "venv", str(TORCH_VENV)], capture_output=True, text=True)
    made = made.returncode == 0 and subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *TORCH_REQUIREMENTS], capture_output=True, text=True)
    if not made or made.returncode != 0:
        print(f"cannot build {TORCH_VENV}: {(made.stderr if made else '')[-500:]}")
        return None
    marker.write_text("\n".join(TORCH_REQUIREMENTS) + "\n")
    return python


def test_pytorch_copy_gives_the_saved_models_logits(exported):
    import tensorflow as tf

    staging, layout, tok, texts = exported
    assert layout["pytorch_safetensors"] is True and (staging / "hf_model" / "model.safetensors").is_file()
    python = torch_python()
    if python is None:
        pytest.skip("CPU torch could not be installed (see the printed reason)")
    proc = subprocess.run([str(python), "-c", TORCH_SCRIPT, str(staging / "hf_model"), json.dumps(texts)],
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT / "work")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(not v for v in got["info"].values()), got["info"]  # no missing, unexpected or reshaped weights
    ids = tf.saved_model.load(str(staging / "saved_model")).signatures["serve_token_ids"]
    enc = tok(texts, truncation=True, max_length=32, padding=True, return_tensors="np")
    want = ids(**{k: tf.constant(v, tf.int32) for k, v in enc.items()})["logits"].numpy()
    np.testing.assert_allclose(np.array(got["logits"]), want, atol=1e-4)
