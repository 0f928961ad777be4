"""The model organism: a small reasoning model sdlib trains from scratch, in which checking
pays by construction, so the study's question (does self-distillation suppress useful
verbalized doubt?) can be asked on a CPU.

    language   problem families, search / confident / verify responses
    checker    an independent verifier of every response
    tokenizer  the word-level tokenizer and chat template
    corpus     the pretraining documents and their mix
    pretrain   the from-scratch training loop
    gate       the premise gate (search vs a forced direct answer, held out)
    config     OrganismConfig and the named variants
    build      corpus -> weights -> gate -> cached Hugging Face folder

``sdlib.organism.build.build("organism")`` (or the model spec ``organism`` /
``organism:<variant>`` anywhere sdlib takes a model) returns the cached folder, building
it on first use.
"""

# ``build`` itself is not re-exported: the name would hide the ``build`` module
from sdlib.organism.build import PremiseError, folder_of, problems, read_premise
from sdlib.organism.config import VARIANTS, OrganismConfig, variant

__all__ = [
    "VARIANTS",
    "OrganismConfig",
    "PremiseError",
    "folder_of",
    "problems",
    "read_premise",
    "variant",
]
