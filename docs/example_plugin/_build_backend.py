"""A minimal PEP 517 build backend (standard library only) for this example.

It builds a pure-Python wheel of the packages next to this file, with the metadata and
entry points of ``pyproject.toml``. Real plugins should use hatchling, setuptools or flit.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dist_info(project: dict) -> tuple[str, dict[str, str]]:
    name = re.sub(r"[-_.]+", "_", project["name"]).lower()
    stem = f"{name}-{project['version']}"
    meta = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {project['version']}",
            f"Summary: {project.get('description', '')}",
            f"Requires-Python: {project.get('requires-python', '')}"]
    meta += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    entry = []
    for group, points in project.get("entry-points", {}).items():
        entry.append(f"[{group}]")
        entry += [f"{k} = {v}" for k, v in points.items()]
        entry.append("")
    files = {
        "METADATA": "\n".join(meta) + "\n",
        "WHEEL": "Wheel-Version: 1.0\nGenerator: _build_backend\nRoot-Is-Purelib: true\n"
                 "Tag: py3-none-any\n",
        "entry_points.txt": "\n".join(entry),
    }
    return f"{stem}.dist-info", files


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None) -> str:
    project = _project()
    info_dir, info_files = _dist_info(project)
    name = info_dir.removesuffix(".dist-info")
    wheel_name = f"{name}-py3-none-any.whl"
    records = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path in sorted(ROOT.glob("*/**/*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[0].startswith((".", "_", "build")) or "__pycache__" in rel.parts:
                continue
            data = path.read_bytes()
            wheel.writestr(rel.as_posix(), data)
            records.append(_record_line(rel.as_posix(), data))
        for filename, text in info_files.items():
            arcname = f"{info_dir}/{filename}"
            wheel.writestr(arcname, text)
            records.append(_record_line(arcname, text.encode()))
        records.append(f"{info_dir}/RECORD,,")
        wheel.writestr(f"{info_dir}/RECORD", "\n".join(records) + "\n")
    Path(wheel_directory, wheel_name).write_bytes(buffer.getvalue())
    return wheel_name


def get_requires_for_build_wheel(config_settings=None) -> list[str]:
    return []
