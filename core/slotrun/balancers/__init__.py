"""Built-in loss balancers (entry point `builtin_balancers`): GECO. Usable without recipes:

    geco = Geco(error_terms=("nll",), kl_terms=("kl",), goal=0.5655 * 3 * 64 * 64, eta=1e-6)
    loss = geco({"nll": nll, "kl": kl})     # nll + beta * kl with the current beta
    geco.update({"nll": float(nll), "kl": float(kl)})   # once per optimiser step, after optimizer.step()
"""

from slotrun.balancers.geco import Geco, GecoConfig

__all__ = ["Geco", "GecoConfig"]
