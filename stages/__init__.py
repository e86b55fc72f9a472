"""The pipeline's stages, one `python -m stages.<name>` each (dvc.yaml).

`python -m stages.<name>` imports this package before the stage module, whose imports (torch,
faiss) take seconds: Ctrl-C meanwhile exits 130 with one line, as it does during the stage's work
(aladin.runtime.run_stage, which hands SIGINT back to Python's KeyboardInterrupt). Stdlib only, so
that the handler is in place before anything slow is imported; only under `-m` (Python sets
sys.argv[0] to "-m" while it locates the module), so a test importing a stage keeps its Ctrl-C.
"""
import signal
import sys
from types import FrameType


def _interrupted(signum: int, frame: FrameType | None) -> None:
    print("interrupted", file=sys.stderr)
    raise SystemExit(130)


if sys.argv[0] == "-m":
    signal.signal(signal.SIGINT, _interrupted)
