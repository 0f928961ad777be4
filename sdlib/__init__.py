"""sdlib: reproduce *Why Does Self-Distillation (Sometimes) Degrade the Reasoning of LLMs?*"""

__version__ = "0.1.0"
