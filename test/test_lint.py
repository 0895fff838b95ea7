"""Style and static checks of the package and tests (pycodestyle at 100 columns, pyflakes)."""
from pathlib import Path

import pycodestyle
from pyflakes.api import checkPath
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "ebmcpilco_ros", ROOT / "test", ROOT / "launch", ROOT / "setup.py"]


def _files():
    for src in SOURCES:
        if src.is_file():
            yield src
        elif src.is_dir():
            yield from sorted(src.rglob("*.py"))


def test_pycodestyle():
    style = pycodestyle.StyleGuide(max_line_length=100, quiet=True)
    report = style.check_files([str(f) for f in _files()])
    assert report.total_errors == 0, "\n".join(report.get_statistics())


def test_pyflakes(capsys):
    import io
    out, err = io.StringIO(), io.StringIO()
    problems = sum(checkPath(str(f), Reporter(out, err)) for f in _files())
    assert problems == 0, out.getvalue() + err.getvalue()
