"""Flax models used across the project, each with a pure ``(apply_fn, params)`` view.

``registry`` (build_model: mlp, cnn, resnet10/18/50, a user's ``module:factory``), ``frozen`` (the
frozen-batch-statistics view of a batch-norm network), ``mlp``, ``cnn``, ``resnet`` and
``pretrained``.
"""
