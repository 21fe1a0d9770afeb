"""Offline demo material: synthetic digit scenes and twin classifiers trained on them.

Importing this package needs only torch and numpy; scikit-image and scikit-learn are imported
when scenes are generated (``pip install 'fcn-cam[demo]'``).
"""

from fcn_cam.demo.scenes import CLASS_NAMES, SCENE_SIZE, Pairs, Scenes, pair_scenes, scenes
from fcn_cam.demo.twins import (
    FEATURE_CHANNELS,
    FEATURE_SIZE,
    INPUT_SIZE,
    MEAN,
    STD,
    WEIGHTS_PATH,
    build_fc_twin,
    build_gap_twin,
    load_meta,
    preprocess,
    twins,
)

__all__ = [
    "CLASS_NAMES",
    "FEATURE_CHANNELS",
    "FEATURE_SIZE",
    "INPUT_SIZE",
    "MEAN",
    "Pairs",
    "SCENE_SIZE",
    "STD",
    "WEIGHTS_PATH",
    "Scenes",
    "build_fc_twin",
    "build_gap_twin",
    "load_meta",
    "pair_scenes",
    "preprocess",
    "scenes",
    "twins",
]
