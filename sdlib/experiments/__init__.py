"""One module per notebook (``context``, ``sft``, ``sdpo_grpo``, ``teacher``, ``coverage``):
the functions a notebook calls. They share ``training`` (content-addressed training runs),
``evaluation`` (evaluations of base and trained policies) and ``results`` (tables and
figures); ``cache`` names the run folders."""
