"""The README and docs/ point only at files inside the repository: a user's clone has nothing beside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_document_points_outside_the_repository() -> None:
    outside = [
        f"{doc.relative_to(ROOT)}:{number}: {line.strip()}"
        for doc in DOCUMENTS
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1)
        if "../" in line
    ]
    assert outside == []


def test_the_documents_they_name_exist() -> None:
    named = {
        name
        for doc in DOCUMENTS
        for name in re.findall(
            r"`((?:docs|deploy|cloud|scripts|bench)/[\w./-]+\.(?:md|py|toml))`", doc.read_text()
        )
    }
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert named and missing == []
