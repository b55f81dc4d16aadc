"""One publish in a process of its own, which stops itself at a step (tests of crashes and stalls).

    python tests/publisher.py STAGING OUTPUT RUN_ID FINGERPRINT [--overwrite] [--at STEP --signal KILL|STOP]

Exit codes are the job's (job/errors.py); SIGKILL shows as -9 to the parent.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from job import publish  # noqa: E402
from job.errors import JobError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("staging")
    ap.add_argument("output")
    ap.add_argument("run_id")
    ap.add_argument("fingerprint")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--at", choices=publish.STEPS)
    ap.add_argument("--signal", default="KILL", choices=("KILL", "STOP"))
    args = ap.parse_args()

    def hook(step: str) -> None:
        if step == args.at:
            print(f"stopping at {step}", flush=True)
            os.kill(os.getpid(), getattr(signal, f"SIG{args.signal}"))

    try:
        publish.publish(Path(args.staging), args.output, publish.Identity(args.run_id, args.fingerprint),
                        args.overwrite, hook=hook)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
