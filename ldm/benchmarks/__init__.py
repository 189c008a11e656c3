"""Measuring tools: the sampler benchmark (``samplers``); the scripts' ``benchmark_*.py`` run them."""
