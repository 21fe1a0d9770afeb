"""Importers: models as they come → a plain module in a layout :mod:`fcn_cam.surgery` knows.

Each importer hands surgery ``nn.Sequential(features…, [pool], Flatten, head…)`` plus the
flatten order and a reference for the exactness check; surgery alone turns Linears into
convolutions and checks the result.

- :mod:`.fx`: any torch.fx-traceable net (a custom ``forward``, several outputs).
- :mod:`.onnx`: ONNX files (Keras/TF or PyTorch exports), checked against onnxruntime.
- :mod:`.timm`: timm's VGG, whose FC layers are already convolutions.
"""
