"""resnorm: a CIFAR-style ResNet under seven normalisations, trained and tracked with MLflow."""

__version__ = "0.1.0"
