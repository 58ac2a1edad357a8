"""Pack examples/src/<name>/ folders into examples/functions/<name>.zip (reproducibly)."""

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "examples"


def pack(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo(str(path.relative_to(folder)), date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)


if __name__ == "__main__":
    for folder in sorted(p for p in (ROOT / "src").iterdir() if p.is_dir()):
        pack(folder, ROOT / "functions" / f"{folder.name}.zip")
        print(f"packed {folder.name}.zip", file=sys.stderr)
