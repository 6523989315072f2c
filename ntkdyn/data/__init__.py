"""Datasets: two moons, MNIST (files, download, embedded subset), Colored MNIST, CelebA."""
