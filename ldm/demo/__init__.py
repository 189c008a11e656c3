"""The embedded demo: the whole FAST pipeline on a CPU, with no downloads.

1. build the texture-ad dataset from scikit-image's CC0 textures;
2. train a tiny autoencoder (stage 1), then a tiny text-conditioned LDM on normal images (stage 2) --
   together they stand in for the pretrained LDM text2img-large the real datasets use;
3. train FAST (embeddings + FARM + adaptor on the frozen stage-2 backbone), one run per defect type;
4. generate image-mask pairs with AIAS (10 network calls per image);
5. train the same segmenter on FAST, DRAEM, CutPaste and normal-only pairs and compare them on the
   held-out real side of the split; write a table, a bar chart and contact sheets;
6. write ``<out>/report.md`` (stage times and peak memory, metrics, pictures).

Tiers: default (<= 15 min on 2 CPU cores, one texture, one segmenter seed); ``--quick`` (a few
minutes); ``--smoke`` (seconds per stage: the pipeline's plumbing, for tests); ``--full`` (the default
budget on every texture x 3 segmenter seeds, mean +- std, STAGE and GroundingAnomaly rows, and the
ablations). ``--stage`` / ``--grounding`` add those synthesizers to any tier; ``--ablations`` runs, on
the same trained models, FAST with FARM on/off and AIAS-10 / AIAS-50 / DDPM-1000, and GroundingAnomaly
w/o GSM (trained once more), w/o NDI, on masks sampled from a mask-TI model (one trained per texture; a
diversity report per defect type), and as one model per texture with and without SCM's semantic map. ``--family wild`` synthesises and
evaluates the second defect family (other rendering code, never used for tuning) over the same
texture-ad backbone, into ``comparison-wild/`` and ``report-wild.md``.

The console shows one line per stage (progress bar and ETA on a terminal, a line a minute
otherwise); every stage's full output is in ``<out>/logs/console/<stage>.log``. Every stage is
skipped when a previous run finished it with the same settings, and training resumes where it
stopped, so running the demo again continues.
"""
