"""What every stage process shares: one line and exit 130 on Ctrl-C, quiet library loaders."""
from __future__ import annotations

import subprocess
import sys

from tests._params import ROOT


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ctrl_c_while_a_stage_imports_is_one_line():
    # As `python -m stages.teacher` runs (argv[0] is "-m" while the package is imported), with
    # the interrupt in the stage module's imports (torch), before run_stage exists.
    proc = _python("import sys; sys.argv[0] = '-m'; import os, signal, stages; "
                   "os.kill(os.getpid(), signal.SIGINT); import stages.teacher")
    assert (proc.returncode, proc.stderr) == (130, "interrupted\n")
    imported = _python("import os, signal, stages; os.kill(os.getpid(), signal.SIGINT)")   # not a stage run
    assert "KeyboardInterrupt" in imported.stderr


def test_faiss_library_fallbacks_are_not_logged():
    proc = _python("from aladin.runtime import setup_logging; setup_logging(); import faiss")
    assert proc.returncode == 0, proc.stderr
    assert "faiss.loader" not in proc.stderr and "swigfaiss" not in proc.stderr
