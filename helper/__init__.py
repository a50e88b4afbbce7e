"""Shared code for the course on saving and loading PyTorch models.

The notebooks import from the sub-modules::

    from helper.data import split_digits, make_loaders
    from helper.models import build_model
    from helper.training import fit, evaluate, seed_everything
    from helper.checkpoint import make_checkpoint, save_checkpoint, load_checkpoint
    from helper.plotting import plot_history
    from helper.paths import artifact_dir, display_path
"""

__version__ = "0.1.0"
