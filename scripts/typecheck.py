"""Run ``mypy --strict`` on the product code (stocksync/, agent/, hub/).

    python scripts/typecheck.py

Why this script exists: pyproject.toml maps one import namespace onto several
folders (``stocksync`` -> stocksync/, ``stocksync.agent`` -> agent/,
``stocksync.hub`` -> hub/, ``stocksync.v1`` -> protos/stocksync/v1/). mypy
finds modules by walking directories, not by reading setuptools' package-dir,
so from the repository root it cannot resolve ``stocksync.agent`` and friends.

So this script builds, in a temporary directory, a tree that mirrors the
import names with symlinks::

    <tmp>/stocksync/<each .py of stocksync/>
    <tmp>/stocksync/agent -> agent/
    <tmp>/stocksync/hub   -> hub/
    <tmp>/stocksync/v1    -> protos/stocksync/v1/

and runs ``python -m mypy --strict`` on it, configured by [tool.mypy] in
pyproject.toml. The generated protobuf modules (``*_pb2*``) are not checked:
their errors are ignored, but their .pyi stubs still give the product code its
message types. mypy's output is printed with paths mapped back to the real
files (relative to the repository root), and the script exits with mypy's code.
Extra arguments go to mypy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Import package -> real folder, as in pyproject.toml [tool.setuptools] package-dir.
SUBPACKAGES = {
    "agent": ROOT / "agent",
    "hub": ROOT / "hub",
    "tools": ROOT / "tools",
    "v1": ROOT / "protos" / "stocksync" / "v1",
}
# A path into a symlinked subpackage, e.g. "stocksync/agent/" -> "agent/".
_MIRRORED = re.compile(rf"(?<![\w./-])stocksync/({'|'.join(SUBPACKAGES)})/")


def build_tree(tmp: Path) -> Path:
    """Mirror the import names under ``tmp`` with symlinks; return the package dir."""
    package = tmp / "stocksync"
    package.mkdir()
    for source in sorted((ROOT / "stocksync").glob("*.py")):
        (package / source.name).symlink_to(source)
    for name, folder in SUBPACKAGES.items():
        (package / name).symlink_to(folder, target_is_directory=True)
    return package


def real_paths(output: str, tmp: Path) -> str:
    """Rewrite the mirrored paths in mypy's output to the real files."""
    output = output.replace(f"{tmp}{os.sep}", "")
    return _MIRRORED.sub(lambda m: f"{SUBPACKAGES[m[1]].relative_to(ROOT).as_posix()}/", output)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="stocksync-typecheck-") as name:
        tmp = Path(name).resolve()
        build_tree(tmp)
        cmd = [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            # Keep the cache between runs, at the usual (git-ignored) place.
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "stocksync",
            *sys.argv[1:],
        ]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        sys.stdout.write(real_paths(proc.stdout, tmp))
        sys.stderr.write(real_paths(proc.stderr, tmp))
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
