"""sdlib: reproduce *Why Does Self-Distillation (Sometimes) Degrade the Reasoning of LLMs?*"""

import os

# torch's OpenMP threads spin while they wait; beside a second busy process on a small
# machine that makes both 7-10x slower. Set before torch is first imported (by any sdlib
# module), unless the user chose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
