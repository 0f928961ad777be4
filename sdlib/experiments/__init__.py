"""One module per notebook (``context``, ``sft``, ``sdpo_grpo``, ``teacher``, ``coverage``):
the functions a notebook calls. They share ``training`` (content-addressed training runs),
``evaluation`` (evaluations of base and trained policies) and ``results`` (tables,
figures with their captions, notes opening with findings); ``cache`` names the run
folders; ``refresh`` brings a run written before findings and captions up to date."""
