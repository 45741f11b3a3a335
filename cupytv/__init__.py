"""cupytv: fast, differentiable total-variation proximal operators as deep-net layers.

``cupytv.reference`` holds the exact CPU solvers every kernel is validated against.
"""

__version__ = "0.1.0"
