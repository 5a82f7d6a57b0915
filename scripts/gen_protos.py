"""Generate the Python code for protos/stocksync/v1/*.proto.

The generated modules are committed (so installing stocksync needs no
protobuf compiler) and live beside their sources, importable as
``stocksync.v1.<file>_pb2``. Never edit them by hand; run::

    python scripts/gen_protos.py          # regenerate in place
    python scripts/gen_protos.py --check  # fail if the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = PROTO_ROOT / "stocksync" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto into ``out_dir``."""
    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    subprocess.run(cmd, check=True)
    generated = sorted((out_dir / "stocksync" / "v1").glob("*_pb2*"))
    return [g for g in generated if g.name.endswith(SUFFIXES)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = {p.name for p in PACKAGE_DIR.iterdir() if p.name.endswith(SUFFIXES)}
        if args.check:
            stale = [f.name for f in fresh if not (PACKAGE_DIR / f.name).exists()]
            stale += [
                f.name
                for f in fresh
                if (PACKAGE_DIR / f.name).exists()
                and not filecmp.cmp(f, PACKAGE_DIR / f.name, shallow=False)
            ]
            stale += sorted(committed - {f.name for f in fresh})
            if stale:
                print(
                    "generated code is stale: " + ", ".join(stale) + "\n"
                    "run: python scripts/gen_protos.py",
                    file=sys.stderr,
                )
                return 1
            print(f"generated code is up to date ({len(fresh)} files)")
            return 0
        for name in committed - {f.name for f in fresh}:
            (PACKAGE_DIR / name).unlink()
        for f in fresh:
            shutil.copyfile(f, PACKAGE_DIR / f.name)
        print(f"wrote {len(fresh)} files to {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
