"""fcn-cam: Class Activation Maps for CNNs with fully-connected heads.

    >>> fcn = fcn_cam.convert(torchvision.models.vgg16(weights="DEFAULT"))
    >>> exp = fcn_cam.explain(fcn, "cat.jpg", scale=2)
    >>> exp.targets[0].name, exp.targets[0].peak, exp.targets[0].box
"""

from .explain import Explanation, explain, explain_files
from .geometry import Geometry, align, stretch
from .modelfile import ModelFileError, load, save
from .runtime import prepare
from .surgery import FCN, ConversionError, convert

__all__ = [
    "FCN", "ConversionError", "Explanation", "Geometry", "ModelFileError",
    "align", "convert", "explain", "explain_files", "load", "prepare", "save", "stretch",
]
__version__ = "0.1.0"
