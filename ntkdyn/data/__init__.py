"""Datasets: one :class:`~ntkdyn.data.dataset.Dataset` shape and a registry.

``registry`` (load_dataset: moons, mnist, cmnist, celeba, a user's ``.npz``, an image folder with
``metadata.csv``), ``dataset`` (the shape, stratified subsets), ``npz`` and ``metadata`` (the two
user forms), ``images`` (the image pipeline and :class:`~ntkdyn.data.images.GroupDataset`),
``moons``, ``mnist``, ``colored_mnist``, ``celeba`` (the paper's data) and the fixtures.
"""
