"""Virtual environments with pinned RQ releases, one per RQ major version under test.

`python -m tests.support.rqenvs` builds every environment under `.venvs/` and returns quickly
when the stamps already match. Each environment gets a .pth file with the repository root, so
the `rq worker` processes it runs can import `tests.support.rq_jobs` from any working directory.

This module runs under the main virtual environment and uses only the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENVS_DIR = REPO_ROOT / ".venvs"

# Label (used in venv names and test ids) -> pip requirements. redis-py is left unpinned, so
# every environment gets the newest redis-py that its RQ release accepts, as a fresh install would.
RQ_REQUIREMENTS: dict[str, list[str]] = {
    "1.16": ["rq==1.16.2"],
    "2.12": ["rq==2.12.0"],
    "3.0": ["rq==3.0.0"],
}
RQ_VERSIONS: list[str] = list(RQ_REQUIREMENTS)

STAMP_NAME = ".schedulerd-rqenv-stamp"
PTH_NAME = "schedulerd_repo_root.pth"
PIP_TIMEOUT_S = 600


class RQEnvError(RuntimeError):
    """An RQ environment is missing or could not be built."""


@dataclass(frozen=True)
class RQEnv:
    """One built RQ environment."""

    label: str
    path: Path
    python: Path
    rq: Path
    version: str
    redis_py_version: str

    @property
    def version_info(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split(".")[:3])

    @property
    def has_repeat(self) -> bool:
        """Whether this RQ release has rq.Repeat, added in RQ 2.3."""
        return self.version_info >= (2, 3)


def venv_path(label: str) -> Path:
    return VENVS_DIR / f"rq-{label}"


def _stamp_text(label: str) -> str:
    # Any change to the pins, the interpreter or the .pth target forces a rebuild.
    material = json.dumps(
        {
            "requirements": RQ_REQUIREMENTS[label],
            "python": sys.version,
            "base_prefix": sys.base_prefix,
            "repo_root": str(REPO_ROOT),
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _check_label(label: str) -> None:
    if label not in RQ_REQUIREMENTS:
        raise RQEnvError(f"unknown RQ version label {label!r}: expected one of {RQ_VERSIONS}")


def is_current(label: str) -> bool:
    _check_label(label)
    stamp = venv_path(label) / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == _stamp_text(label)


def _run_logged(argv: list[str], log_path: Path) -> None:
    with log_path.open("ab") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        completed = subprocess.run(
            argv,
            check=False,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=PIP_TIMEOUT_S,
        )
    if completed.returncode != 0:
        raise RQEnvError(
            f"command failed with exit code {completed.returncode}: {' '.join(argv)}\n"
            f"--- {log_path} ---\n{log_path.read_text(errors='replace')}"
        )


def build(label: str) -> Path:
    """Create or refresh the environment for `label` unless its stamp is current."""
    _check_label(label)
    path = venv_path(label)
    if is_current(label):
        return path

    if path.exists():
        shutil.rmtree(path)
    VENVS_DIR.mkdir(exist_ok=True)
    log_path = VENVS_DIR / f"rq-{label}.build.log"
    log_path.unlink(missing_ok=True)

    _run_logged([sys.executable, "-m", "venv", str(path)], log_path)
    python = path / "bin" / "python"
    _run_logged(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *RQ_REQUIREMENTS[label]],
        log_path,
    )

    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / PTH_NAME).write_text(f"{REPO_ROOT}\n")

    # Written last, so an interrupted build is redone on the next call.
    (path / STAMP_NAME).write_text(_stamp_text(label) + "\n")
    log_path.unlink(missing_ok=True)
    return path


def build_all(labels: list[str] | None = None) -> None:
    """Build every missing or stale environment, in parallel because pip spends most time waiting."""
    todo = [label for label in (labels or RQ_VERSIONS) if not is_current(label)]
    if not todo:
        return
    print(f"building RQ environments: {', '.join(todo)}", file=sys.stderr, flush=True)
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        for future in [pool.submit(build, label) for label in todo]:
            future.result()


def _probe_versions(python: Path) -> tuple[str, str]:
    completed = subprocess.run(
        [str(python), "-c", "import rq, redis; print(rq.__version__); print(redis.__version__)"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if completed.returncode != 0:
        raise RQEnvError(f"cannot import rq and redis with {python}: {completed.stderr.strip()}")
    rq_version, redis_version = completed.stdout.split()
    return rq_version, redis_version


_cache: dict[str, RQEnv] = {}


def rq_env(label: str) -> RQEnv:
    """Return the built environment for `label` ("1.16", "2.12" or "3.0"), building it if needed."""
    _check_label(label)
    if label not in _cache:
        path = build(label)
        python = path / "bin" / "python"
        rq_version, redis_version = _probe_versions(python)
        _cache[label] = RQEnv(
            label=label,
            path=path,
            python=python,
            rq=path / "bin" / "rq",
            version=rq_version,
            redis_py_version=redis_version,
        )
    return _cache[label]


def main() -> int:
    parser = argparse.ArgumentParser(description="Build the RQ virtual environments used by the tests.")
    parser.add_argument("labels", nargs="*", help=f"versions to build, from {RQ_VERSIONS} (default: all)")
    parser.add_argument(
        "--show", action="store_true", help="print each environment's rq and redis-py version"
    )
    args = parser.parse_args()
    labels: list[str] = args.labels or RQ_VERSIONS
    try:
        build_all(labels)
        if args.show:
            for label in labels:
                env = rq_env(label)
                print(f"{env.path}: rq {env.version}, redis-py {env.redis_py_version}")
    except RQEnvError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
