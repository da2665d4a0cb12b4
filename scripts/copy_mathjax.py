"""Copy MathJax 3 out of the django-static-mathjax wheel into the book's static build folder,
so the site's math renders with no network (``make mathjax``, part of ``make html``).

    python scripts/copy_mathjax.py _build/static/mathjax
"""

import shutil
import sys
from pathlib import Path

import mathjax  # the django-static-mathjax distribution: plain static files, no Django needed


def main(dest: str) -> None:
    source = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    target = Path(dest) / "es5"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    print(f"MathJax {source} -> {target}")


if __name__ == "__main__":
    main(sys.argv[1])
