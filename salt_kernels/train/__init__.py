"""The two-stage SALT training recipe: a small teacher, then a large student trained with
knowledge distillation from it for the first n_KD steps and on the labels alone after that.

    from salt_kernels.train import TrainConfig, train
    result = train(TrainConfig().replace(role="teacher", model="teacher-s", steps=500,
                                         out_dir="runs/t"))

Command line: `salt-kernels demo` (teacher, baseline and SALT runs plus a report) and
`salt-kernels train` (one run). Needs the `train` extra: pip install "salt-kernels[train]".
"""

from .config import ConfigError, TrainConfig
from .models import MODEL_PRESETS, build_model


def train(cfg, **kwargs):
    """Run one training job; see salt_kernels.train.trainer.train."""
    from .trainer import train as _train

    return _train(cfg, **kwargs)


__all__ = ["ConfigError", "TrainConfig", "MODEL_PRESETS", "build_model", "train"]
