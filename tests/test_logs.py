"""repack._logs: JSON that never fails and stays ASCII."""

from __future__ import annotations

import json
import os
from pathlib import Path

from repack.plumbing import dumps, json_bytes

from .conftest import write_dicom


def test_json_is_ascii_and_never_fails_on_a_non_utf8_name(tmp_path: Path) -> None:
    document = {
        "PatientName": "Müller^Zoë 山田",
        "emoji": "🙂",
        "src": os.fsdecode(b"/in/\xff.dcm"),
    }
    data = dumps(document)
    assert data.isascii()
    parsed = json.loads(data)
    assert parsed["PatientName"] == "Müller^Zoë 山田"
    assert parsed["emoji"] == "🙂"
    assert parsed["src"] == "/in/\\xff.dcm"
    assert json.loads(json_bytes(document)) == parsed
    path = write_dicom(tmp_path / "x.dcm")
    assert path.exists()
