"""What a user runs, one subpackage per capability: data, training, inference, evaluation, bundles; demo.py.
May import transforms, networks, metrics, phantoms and errors/runtime; subpackages use each other downwards only.

Layers, lowest first: ``bundles`` and ``data`` (no other pipeline imports), then ``training``,
``inference`` (may use training's handlers), ``evaluation`` (may use inference and training's
curves), and ``demo.py`` on top. Nothing here imports ``voxpipe.cli``.
"""
