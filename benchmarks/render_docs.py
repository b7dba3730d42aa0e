"""Write every measured table into the docs: the part of a page between
``<!-- measured: NAME -->`` and ``<!-- /measured -->`` becomes the tables of all
docs/measurements/NAME*.json files, one per machine, newest first.

    python benchmarks/render_docs.py            # rewrite the pages
    python benchmarks/render_docs.py --check    # exit 1 if a page differs from its JSON
"""

import argparse
import json
import re
import sys
from pathlib import Path

from measured import markdown

ROOT = Path(__file__).resolve().parents[1]
SECTION = re.compile(r"(<!-- measured: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /measured -->)", re.S)


def render(page: str, measurements: Path) -> str:
    def tables(match: re.Match) -> str:
        files = sorted(measurements.glob(f"{match['name']}*.json"))
        records = sorted((json.loads(f.read_text()) for f in files), key=lambda r: r["date"], reverse=True)
        body = "\n\n".join(markdown(r) for r in records) or "(not measured yet)"
        return f"{match.group(1)}{body}\n{match.group(4)}"

    return SECTION.sub(tables, page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    stale = []
    for page in sorted(args.docs.glob("*.md")):
        text = page.read_text()
        rendered = render(text, args.docs / "measurements")
        if rendered != text:
            stale.append(page)
            if not args.check:
                page.write_text(rendered)
    if args.check and stale:
        sys.exit(f"out of date with docs/measurements/: {', '.join(map(str, stale))} (make docs)")


if __name__ == "__main__":
    main()
