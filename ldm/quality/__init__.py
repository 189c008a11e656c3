"""Generation-quality numbers that need no segmenter: ``pixels`` (background preservation, anomaly
saliency, diversity of a pairs folder; each pair's scores in ``ldm.pairs``) and ``generative`` (Inception
Score and IC-LPIPS from weight files the user gives)."""
