"""Training, the same for every primitive.

* :mod:`ngp.train.loop`: the one loop (budget, progress, divergence guard, eval-at, checkpoints,
  Ctrl-C) and the :class:`~ngp.train.loop.Task` protocol a primitive implements;
* :mod:`ngp.train.settings`: configs of one shape, defaults in ``ngp/configs/<primitive>/base.json``;
* :mod:`ngp.train.precision`: device choice, mixed precision and the non-finite-step guard;
* :mod:`ngp.train.plots`: ``training.png``;
* :mod:`ngp.train.session`: from command-line arguments to a trained run folder (new or resumed).
"""
