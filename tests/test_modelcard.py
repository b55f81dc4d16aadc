"""job.modelcard: the card names the run's real base model, data, settings and numbers."""

from __future__ import annotations

from job import modelcard
from sample_metrics import LABELS, sample_metrics


def test_card_names_the_real_metric_values():
    m = sample_metrics()
    card = modelcard.model_card(m)
    final = m["final_evaluation"]
    assert card.startswith("# Model card: text classifier fine-tuned from `gs://in/models/minilm`")
    assert f"| accuracy | {final['accuracy']:.4f} |" in card
    assert f"| macro-F1 | {final['macro_f1']:.4f} |" in card
    assert f"| loss (cross-entropy) | {final['loss']:.4f} |" in card
    for name in LABELS:
        c = final["per_class"][name]
        assert f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |" in card
    cm = final["confusion_matrix"]["rows_true_cols_predicted"]
    assert f"| negative | {' | '.join(map(str, cm[0]))} |" in card
    assert f"| 4 | {m['epochs'][3]['loss']:.4f} |" in card


def test_card_names_data_settings_and_how_to_load():
    m = sample_metrics()
    card = modelcard.model_card(m, run_uri="gs://out/runs/r7/", plots=["plots/loss.png"])
    assert "`0123456789abcdef`" in card and "gs://in/sst/train.csv" in card and "gs://in/sst/validation.csv" in card
    assert "| learning_rate | 3e-05 |" in card and "| epochs | 4 |" in card and "| max_length (tokens) | 64 |" in card
    assert "gcloud storage cp -r gs://out/runs/r7 ." in card
    assert 'tf.saved_model.load("./r7/saved_model").signatures["serving_default"]' in card
    assert 'TFAutoModelForSequenceClassification.from_pretrained("./r7/hf_model", use_safetensors=False)' in card
    assert "![loss](plots/loss.png)" in card
    assert "## Intended use" in card and "## Limitations" in card and "truncated to 64 tokens" in card


def test_local_run_is_loaded_in_place_and_odd_label_names_keep_tables_intact():
    m = sample_metrics()
    m["final_evaluation"]["per_class"] = {"a|b": m["final_evaluation"]["per_class"]["negative"]}
    card = modelcard.model_card(m, run_uri="/runs/r1")
    assert 'tf.saved_model.load("/runs/r1/saved_model")' in card and "gcloud" not in card
    assert "| a\\|b |" in card


def test_card_redacts_secrets_in_the_uris_it_quotes():
    m = sample_metrics()
    signed = ("https://storage.googleapis.com/in/train.csv?X-Goog-Algorithm=GOOG4-RSA-SHA256"
              "&X-Goog-Signature=deadbeefcafe1234&X-Goog-Credential=sa%40p.iam")
    m["data"]["sources"] = {"train": [signed], "validation": ["https://h/v.csv?token=s3cr3t-t0ken"]}
    m["config"]["model"]["model"] = "https://h/model?access_token=ya29.abcdef"
    card = modelcard.model_card(m, run_uri="gs://out/runs/r7/")
    assert "deadbeefcafe1234" not in card and "s3cr3t-t0ken" not in card and "ya29.abcdef" not in card
    assert card.count("REDACTED") >= 3 and "storage.googleapis.com/in/train.csv" in card
