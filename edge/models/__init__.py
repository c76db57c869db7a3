"""Layer 3, models: the StudentNet family, the homework baselines, torchvision classifiers, the
architecture registry (`registry`: each model module registers its builders when this package is
imported), BatchNorm folding and the exact classifier merge. Builds modules; reads no file."""

from edge.models import baselines, classifiers, student  # they fill the registry

__all__ = ["baselines", "classifiers", "student"]
