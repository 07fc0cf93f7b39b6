"""Write `nbs/index.ipynb` (the documentation home page) from `README.md`, one markdown cell per section.

The README is the text people see first on the repository; the index notebook mirrors it for the docs.
`tests/test_project.py` checks that the two agree, so run this after editing the README.
"""
import re
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parent.parent

def readme_sections(text: str) -> list[str]:
    "Split markdown `text` before each level-2 heading; the title and its `>` summary form the first cell."
    parts = re.split(r"(?m)^(?=## )", text.strip() + "\n")
    head, _, intro = parts[0].partition("\n\n>")  # nbdev reads list items in the title cell as front matter
    summary, _, rest = intro.partition("\n\n")
    first = [head.strip() + "\n\n>" + summary, rest] if intro else [parts[0]]
    return [p.strip() for p in first + parts[1:] if p.strip()]

def write_index(readme=ROOT / "README.md", index=ROOT / "nbs" / "index.ipynb"):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    nb.cells = [nbformat.v4.new_markdown_cell(s) for s in readme_sections(Path(readme).read_text())]
    for i, cell in enumerate(nb.cells): cell.id = f"readme{i:02d}"
    nbformat.write(nb, index)

if __name__ == "__main__":
    write_index()
