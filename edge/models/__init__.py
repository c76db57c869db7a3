"""Layer 3, models: the StudentNet family (`student`), the homework baselines (`baselines`), torchvision
classifiers (`classifiers`), BatchNorm folding (`fold`) and the exact classifier merge (`merge`).
Builds modules; reads no file.

The architecture table is here: each ``--arch`` name leads to its builder through `registry.register_arch`
(``torchvision`` stands for every torchvision classifier), so `registry.build_net` builds any of them
and adding an architecture is one line below. Importing any ``edge.models`` module fills it.
"""

from edge.models import baselines, classifiers, student
from edge.models.registry import TORCHVISION, register_arch

register_arch("dw")(lambda spec: student.StudentNet(spec.config))
register_arch("cnn", "group")(lambda spec: baselines.ConvNet(spec.config, spec.groups))
register_arch(TORCHVISION)(lambda spec: classifiers.torchvision_classifier(spec.arch, spec.config.num_classes,
                                                                          spec.config.in_channels))
