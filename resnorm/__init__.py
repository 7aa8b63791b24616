"""resnorm: a CIFAR-style ResNet under seven normalisations, trained and tracked with MLflow."""

from pathlib import Path

__version__ = "0.1.0"

# The MLproject's folder: the parent of this package (entry points, MLproject, conda.yaml).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
