"""The script torchrun starts for ``python -m near_client.dataflex train``: register, then DataFlex's launch.

DataFlex's CLI starts torchrun workers on ``dataflex/launcher.py``; ``near_client.dataflex.main``
points it here, so every worker registers ``near_service`` before DataFlex builds its trainer.
"""

from __future__ import annotations

import os
import sys


def run() -> None:
    # torchrun runs this file as a script, so sys.path[0] is near_client/ itself, where dataflex.py
    # would shadow the real dataflex package: drop that entry before importing anything.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    from near_client.dataflex import register

    register()
    from dataflex.launcher import launch

    launch()


if __name__ == "__main__":
    run()
