"""The exact classifier merge of a StudentNet.

The last pointwise conv, the global average pool and the classifier are all linear, so
``fc(pool(pw(z))) = (W_fc W_pw) pool(z) + (W_fc b_pw + b_fc)``: the last width shrinks to the number of
classes (the merged conv) and the classifier becomes the identity. Exact up to float rounding; on the
homework's student it removes 62,700 of 256,779 parameters. `edge export` merges every StudentNet
it writes (`merged_classifier`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge.core.config import ConfigError, StudentConfig


def mergeable(config: StudentConfig) -> bool:
    """Whether `merge_classifier` shrinks this model (a pointwise last stage wider than the classes,
    with no max-pool between it and the classifier)."""
    last = config.depth - 1
    return last >= 1 and last not in config.pools and config.widths[-1] > config.num_classes


def file_config(config: StudentConfig) -> StudentConfig:
    """The config of the model an exported file computes: merged when `mergeable` (widths end at the classes)."""
    return replace(config, widths=config.widths[:-1] + (config.num_classes,)) if mergeable(config) else config


def merge_classifier(config: StudentConfig, state: dict[str, np.ndarray]) -> tuple[StudentConfig, dict]:
    """Fold the classifier into the last pointwise conv: width ``num_classes``, identity classifier."""
    if not mergeable(config):
        raise ConfigError("the classifier merges only into a pointwise last stage wider than the classes "
                          "and not followed by a max-pool")
    last = f"cnn.{config.depth - 1}.3"
    w_pw = np.asarray(state[f"{last}.weight"], np.float64)[:, :, 0, 0]
    b_pw = np.asarray(state[f"{last}.bias"], np.float64)
    w_fc, b_fc = np.asarray(state["fc.0.weight"], np.float64), np.asarray(state["fc.0.bias"], np.float64)
    new = dict(state)
    new[f"{last}.weight"] = (w_fc @ w_pw)[:, :, None, None].astype(np.float32)
    new[f"{last}.bias"] = (w_fc @ b_pw + b_fc).astype(np.float32)
    new["fc.0.weight"] = np.eye(config.num_classes, dtype=np.float32)
    new["fc.0.bias"] = np.zeros(config.num_classes, np.float32)
    return file_config(config), new


def merged_classifier(model) -> tuple:
    """-> (``model`` as the file computes it, its metadata entry): a StudentNet whose last pointwise
    conv, global pool and classifier merge into one smaller conv (`edge.models.merge.mergeable`) is
    rebuilt merged (`edge.models.merge.merge_classifier`, exact up to float rounding); any other
    model is returned as it is, with no entry."""
    from edge.models.student import StudentNet, build_student, state_to_numpy

    if not isinstance(model, StudentNet) or not mergeable(model.config):
        return model, {}
    config, state = merge_classifier(model.config, state_to_numpy(model))
    merged = build_student(config, state)
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, merged))
    return merged, {"classifier_merge": f"last pointwise conv, global pool and classifier merged into one "
                                       f"{config.widths[-1]}-output conv (exact): {before:,} -> {after:,} parameters"}
