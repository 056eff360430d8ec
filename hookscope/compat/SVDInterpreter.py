"""``transformer_lens.SVDInterpreter``: the module path of TL's class; the implementation is
:mod:`hookscope.analysis.svd_interpreter`."""

from hookscope.analysis.svd_interpreter import SVDInterpreter

__all__ = ["SVDInterpreter"]
