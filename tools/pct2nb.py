"""Convert percent-format Python scripts (`# %%` cells) into clean notebooks in `nbs/`, or back.

Developer tool: `python tools/pct2nb.py SRC.py nbs/NAME.ipynb` writes the notebook;
`python tools/pct2nb.py --to-py nbs/NAME.ipynb OUT.py` writes the script for editing.
"""
import os, sys, tempfile
import jupytext

KERNEL = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}

def to_notebook(src, dst):
    nb = jupytext.read(src, fmt="py:percent")
    nb.metadata = dict(KERNEL)
    for cell in nb.cells: cell.metadata = {}
    if os.path.exists(dst): keep_cell_ids(nb, jupytext.read(dst))
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)), prefix=".", suffix=".ipynb")
    os.close(fd)
    jupytext.write(nb, tmp, fmt="ipynb")
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)  # atomic: other processes never see a half-written notebook

def keep_cell_ids(nb, old):
    "Give cells whose source is unchanged their old ids, so exported modules do not churn on every write."
    free = {}
    for cell in old.cells:
        if "id" in cell: free.setdefault((cell.cell_type, cell.source), []).append(cell.id)
    for cell in nb.cells:
        ids = free.get((cell.cell_type, cell.source))
        if ids: cell.id = ids.pop(0)

def to_script(src, dst):
    jupytext.write(jupytext.read(src), dst, fmt="py:percent")

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--to-py": to_script(*args[1:3])
    elif len(args) == 2: to_notebook(*args)
    else: sys.exit(__doc__)
