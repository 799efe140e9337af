"""Data sources, dataset info, transforms and the grain input pipeline (see DESIGN.md, "Data").

Import submodules explicitly (e.g. ``from jaxvision.data import shapes``); importing
``jaxvision.data.shapes`` registers the ``jaxvision_shapes`` TFDS builder.
"""
