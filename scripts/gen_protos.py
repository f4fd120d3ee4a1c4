"""Regenerates the Python code of every .proto under protos/ into the `gmbsync` package.

The output is what `grpc_tools.protoc` and mypy-protobuf produce, untouched: messages
(`*_pb2.py`), gRPC stubs (`*_pb2_grpc.py`) and typed stubs (`*.pyi`). Package markers are added
so that `gmbsync.queue.v1` imports as the .proto package reads. Run it through `make protos`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_PACKAGE = ROOT / "gmbsync"


def main(argv: list[str] | None = None) -> int:
    # No options; `--help` says what this does and touches nothing.
    argparse.ArgumentParser(prog="python scripts/gen_protos.py", description=__doc__).parse_args(
        argv
    )
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if OUT_PACKAGE.exists():
        shutil.rmtree(OUT_PACKAGE)
    OUT_PACKAGE.mkdir()
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    # The mypy-protobuf plugins are installed beside this interpreter, which may not be on PATH.
    bin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--mypy_out={ROOT}",
        f"--mypy_grpc_out={ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for package_dir in [OUT_PACKAGE, *[p for p in OUT_PACKAGE.rglob("*") if p.is_dir()]]:
        (package_dir / "__init__.py").write_text(
            '"""Generated from protos/ by make protos; do not edit."""\n'
        )
        (package_dir / "py.typed").touch()
    print(f"generated {len(protos)} proto files into {OUT_PACKAGE.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
