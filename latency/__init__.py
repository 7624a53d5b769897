"""The `latency` suite: what one WRITE and one READ cost, per method, backbone, context length,
batch size and write setting, and when writing a memory once beats re-reading the context.

No training: cost does not depend on the weights, so every backbone is built from a config with
random weights. A suite YAML with `kind: latency` (harness/suites/latency.yaml) names backbone
families (one config per backbone arch, e.g. a GPT-2-shaped Llama and a Mamba-130M-shaped Mamba),
grids (family x context lengths x batch sizes) and a timing protocol; every method of the registry
(plugins included) is timed on the first backbone of a family its `archs` allow, at every value of
its write axis the suite lists (`axis_values`, keyed by the axis's config field; a method without
an axis, or with an axis the suite does not list, gets its own setting).

Two kinds of cell, each a results folder / file that resumes like any run:
- timing  `results/<suite>/<id>/{config.yaml, summary.json}`: WRITE of a batch of contexts and
  READ (greedy decoding of the target, `harness.evaluate.greedy_generate`) of one query per
  context: median, quartiles, min/max of the repeats; memory floats; peak memory.
- ratio   `results/<suite>/ratio/<id>.json`: R = (one gradient write step: forward over [M; C]
  plus the gradient of the next-token loss with respect to M, no graph kept) / (one forward over
  the same tokens without gradient): the paper's cost-model constant.

Modules: `latency.spec` (the suite YAML and its cells), `latency.timing` (what a cell measures),
`latency.run` (`run_all.py --suite latency`: time the cells, store and resume them). The analysis
(`break_even_reads`, `break_even_table`, and `predicted_break_even`, the paper's appendix-D cost
model with the measured R) lives beside the latency figures, in `plots/latency_costs.py`.
"""
