"""The course's maintainer tools: run them from the repository root as modules.

    python -m tools.run_notebooks 03        # make run
    python -m tools.mutate 03               # make mutations runs them through tests/test_mutations.py
    python -m tools.portability 03 --setting mixed
    python -m tools.slides check            # make slides runs `browser`

``python tools/NAME.py`` works too where the repository root is on ``PYTHONPATH`` (the modules
import each other as ``tools.NAME``). What every notebook runner shares, the kernels'
environment and the notebook client, is in ``tools/harness.py``.
"""
