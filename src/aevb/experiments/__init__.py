"""The paper's experiments and the seed notes' contrasts, built on the public layers.

* :mod:`aevb.experiments.presets` — the paper's training set-up;
* :mod:`aevb.experiments.reproduce` — Figures 2–5 of Kingma & Welling (2014);
* :mod:`aevb.experiments.contrasts` — plain autoencoder vs VAE, PCA vs linear VAE.
"""
