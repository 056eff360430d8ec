"""``transformer_lens.FactoredMatrix``: the module path of TL's class; the implementation is
:mod:`hookscope.factored_matrix`."""

from hookscope.factored_matrix import FactoredMatrix

__all__ = ["FactoredMatrix"]
