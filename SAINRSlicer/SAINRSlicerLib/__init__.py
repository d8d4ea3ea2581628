"""The SAINRSlicer module's library (the module file ``SAINRSlicer.py`` is its thin shell).

- :mod:`.framework`: Slicer's scripted-module classes in the application, headless stand-ins
  on the PyPI package ``slicer-core`` (real MRML, no Qt);
- :mod:`.core`: where the ``sainr`` core lies, its torch-free modules, the module's error;
- :mod:`.torchenv`: PyTorch for the subprocess: installed version, probe, install;
- :mod:`.process`: the background process and how to stop all of it;
- :mod:`.sceneio`: volume nodes to and from files and SimpleITK images;
- :mod:`.run`: one reduction in the background (progress, log, result into the scene);
- :mod:`.views`: the compare layout and the gating-mask overlay;
- :mod:`.logic`: the Logic and its parameter node (the one API of panel, console and tests);
- :mod:`.panel`: what the panel shows (texts, device choices, error display).
"""
