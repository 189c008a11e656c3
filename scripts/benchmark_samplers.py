#!/usr/bin/env python
"""Time every sampler on one FAST model: NFE, seconds per image, speed-up over DDPM-1000, overhead.

    .venv/bin/python scripts/benchmark_samplers.py                       # tiny config, default samplers
    .venv/bin/python scripts/benchmark_samplers.py --threads 1 --json bench.json

The benchmark lives in ``ldm/benchmarks/samplers.py`` (what is timed, the overhead and the DDPM-1000 estimate;
``--help`` for every flag); ``scripts/benchmark_generation.py`` reuses its model and inputs.
"""
import sys

from ldm.benchmarks.samplers import cli

if __name__ == "__main__":
    sys.exit(cli())
