# finetune-job GPU image:  make image IMAGE=REGISTRY/finetune-job:TAG   (docker build -t IMAGE .)
#
# Runs on any node that has only the NVIDIA driver and the container toolkit (or GKE's device
# plugin): CUDA and cuDNN user-space libraries come from pip (tensorflow[and-cuda]), so the base is a
# plain Python image. Tests: tests/test_dockerfile.py checks this file without building it.

# Python 3.11 on Debian 12, pinned by tag and by the digest of its multi-architecture index. The
# digest was taken from public references (not checked against Docker Hub from here); refresh both
# together with `docker buildx imagetools inspect python:3.11-slim-bookworm`.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# Everything the job writes goes below /scratch, which Kubernetes mounts as an emptyDir so the root
# filesystem can be read-only. TMPDIR and HOME point at the mount itself because it always exists
# (an empty volume hides any sub-folder made here); the job, huggingface_hub and matplotlib create
# the rest. MPLCONFIGDIR: matplotlib (the report's plots) needs a writable config/cache folder and
# otherwise falls back to a new temp folder with a warning on every start.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/scratch \
    TMPDIR=/scratch \
    HF_HOME=/scratch/hf \
    FT_WORK_DIR=/scratch/work \
    MPLCONFIGDIR=/scratch/mpl \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib
ENV PATH=/usr/local/nvidia/bin:$PATH
# NVIDIA_DRIVER_CAPABILITIES: the toolkit then injects libcuda/nvidia-smi but no graphics libraries.
# NVIDIA_VISIBLE_DEVICES is deliberately not set: GPUs come from `--gpus` or the k8s device plugin,
# never from an image default that would bypass the scheduler's GPU accounting.
# /usr/local/nvidia: where GKE's device plugin mounts the driver libraries (absent elsewhere: harmless).

# Fixed UID/GID so Kubernetes' runAsUser (k8s/base/job.yaml) and file ownership agree.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /scratch --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /scratch \
    && chown app:app /scratch

# Dependencies before code, so editing the job does not reinstall TensorFlow (~5 GB with CUDA).
# The constraint (-c) holds tensorflow to the version requirements.txt pins and the and-cuda extra
# adds the matching CUDA/cuDNN/NCCL wheels; then the rest of requirements.txt. One layer: both
# steps depend on the same file, so splitting them would not save a reinstall.
COPY requirements.txt /app/requirements.txt
RUN pip install -c /app/requirements.txt "tensorflow[and-cuda]" \
    && pip install -r /app/requirements.txt

# The job's code: read-only for the runtime user (owned by root), byte-compiled now because the
# root filesystem is read-only at run time.
COPY entrypoint.py /app/entrypoint.py
COPY job/ /app/job/
RUN python -m compileall -q /app/job

USER 10001:10001
WORKDIR /scratch

# Exec form: Python gets the arguments (`docker run IMAGE train --help`) and the signals directly.
# PID 1 ignores a signal it has no handler for. The job handles SIGTERM only while a run is under
# way (job/run.py: it saves a checkpoint if training and exits 75, RETRY); during start-up (imports,
# argument parsing) Python has no handler, so Python must not be PID 1 or a stop waits for SIGKILL:
# use `docker run --init` (the Makefile's docker-run does), and the Kubernetes pod sets
# shareProcessNamespace so the pause container is PID 1. With that, SIGTERM outside the job's
# handler ends Python at once (exit 143). No tini here: one binary fewer, and neither runtime needs it.
ENTRYPOINT ["python", "/app/entrypoint.py"]
