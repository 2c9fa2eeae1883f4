"""Where a measurement came from: the checked-out commit and the command that ran."""

from __future__ import annotations

import functools
import shlex
import subprocess
import sys
from pathlib import Path


def commit(repo: Path) -> str:
    """The commit checked out in ``repo``, "+dirty" when tracked files differ from it (then the
    figures are not that commit's alone)."""
    run = functools.partial(subprocess.run, cwd=repo, capture_output=True, text=True, check=False)
    head = run(["git", "rev-parse", "HEAD"]).stdout.strip() or "unknown"
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return f"{head}+dirty" if dirty else head


def module_command(module: str) -> str:
    """This process's command line as ``python -m module args...``, shell-quoted."""
    return shlex.join(["python", "-m", module, *sys.argv[1:]])
