"""Pictures of what a policy learned, drawn with matplotlib (the ``agentfast[plot]`` extra).

* ``attention_maps``: the attention weights of one episode, per layer and head, over the
  token stream, and how much each agent attends to each agent (``agentfast inspect``);
* ``curves``: training curves from a run's ``train_log.jsonl``;
* ``evaluation_plots``: held-out accuracy per task type next to the baselines, option
  confusion, termination precision/recall, value against return (``agentfast evaluate --plots``).

Figures are drawn on matplotlib's Agg canvas without pyplot (no display needed) and each
PNG gets a JSON file beside it with the numbers it shows. Importing this package imports
neither matplotlib nor torch; the modules do when used.
"""
