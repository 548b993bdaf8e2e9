"""The README and CHANGELOG point at files that exist (the docs site's own links are checked by
`mkdocs build --strict` in `make test`), and the README stays short."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    docs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
    for doc in ("README.md", "CHANGELOG.md", "bench/results/README.md", *docs):
        text = (ROOT / doc).read_text()
        links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
        paths = re.findall(r"`((?:bench/results|docs|tests|bench)/[\w./+-]+)`", text)
        base = (ROOT / doc).parent
        missing = [p for p in links if not p.startswith("http") and not (base / p).exists()]
        missing += [p for p in paths if "*" not in p and not (ROOT / p).exists()]
        assert not missing, f"{doc} points at missing files: {missing}"
