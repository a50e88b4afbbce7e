"""Settings for every test, notebooks included (nbval's kernels inherit this environment).

TQDM_DISABLE=1 hides tqdm's progress bars, whose text holds timings and would
make stored outputs differ on every run; in JupyterLab students still see them.
The stored notebook outputs were made the same way (``make refresh``).
"""

import os

os.environ["TQDM_DISABLE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")
