"""Large Model Lab: build, train, scale, evaluate and compress large models.

    >>> from lab.config import load_config
    >>> from lab.train import fit
    >>> run = fit(load_config("gpt-nano", ["--trainer.max_steps", "50"]))
    >>> run.summary["status"]
    'completed'
"""

__version__ = "0.1.0"
