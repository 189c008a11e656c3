"""Generation-quality numbers that need no segmenter: ``pixels`` (background preservation, anomaly
saliency, diversity; each pair's scores in ``ldm.pairs``), ``folders`` (their means over a pairs folder),
``generative`` (Inception Score and IC-LPIPS) and ``generative_folders`` (both on generated folders, from
weight files the user gives), ``latent_masks`` (how much of each defect type's masks survives the
pixel → latent step) and ``mask_diversity`` (how varied a mask model's masks are against the real ones)."""
